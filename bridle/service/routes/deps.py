"""FastAPI dependencies the route families share: the service state, the API key and the uploads."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import Depends, Request

from bridle.runtime import tracing
from bridle.service.errors import ServiceError
from bridle.service.media import Upload, read_uploads
from bridle.service.middleware import ADMITTED
from bridle.service.state import ServiceState


async def state_of(request: Request) -> ServiceState:  # async: FastAPI runs a plain def in a thread
    return request.app.state.bridle


State = Annotated[ServiceState, Depends(state_of)]


async def require_key(request: Request) -> None:  # async: FastAPI runs a plain def in a thread
    """With an API key configured: `X-API-Key: <key>` or `Authorization: Bearer <key>`, else 401."""
    expected = request.app.state.bridle.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(
            401,
            "unauthorized",
            "missing or wrong API key (X-API-Key or Authorization: Bearer)",
            {"WWW-Authenticate": "Bearer"},
        )


async def uploads_of(request: Request) -> list[Upload]:
    """The request's uploads (bridle/service/media.py), once the service can take work (503 before the body
    is read otherwise: not_ready, shutting_down). Called by the route, not a dependency: FastAPI solves
    dependencies before it checks the query, and a bad parameter should not cost a body read."""
    state: ServiceState = request.app.state.bridle
    metrics = state.inference.metrics
    if not request.scope.get("state", {}).get(ADMITTED):
        # a route that reads uploads outside the in-flight bound: declare it @admitted
        # (bridle/service/routes/admission.py). A bug, so a 500, not a silent unbounded read.
        raise RuntimeError(f"{request.url.path} reads uploads but is not @admitted")
    if (error := state.unavailable()) is not None:
        metrics.refused.labels(error.code).inc()
        raise error
    metrics.bodies_read.inc()
    started = time.perf_counter()
    with tracing.span("read") as span:
        uploads = await read_uploads(request, state.settings.max_upload_bytes)
        if span is not None:
            span.set_attribute("bridle.uploads", len(uploads))
            span.set_attribute("bridle.bytes", sum(len(u.data) for u in uploads))
    metrics.stage_seconds.labels("read").observe(time.perf_counter() - started)
    return uploads
