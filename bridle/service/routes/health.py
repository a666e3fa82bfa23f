"""`GET /health` (the process is alive), `GET /ready` (models loaded and warm) and `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bridle.service.errors import error_response
from bridle.service.routes.admission import not_admitted
from bridle.service.routes.deps import State, require_key
from bridle.service.schemas import Health, Ready, error_responses

router = APIRouter()


@router.get("/health", summary="the process is alive")
@not_admitted("answers a constant: a probe must answer under any load")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    summary="200 once every model is loaded and warmed up, 503 before and while stopping",
    response_model=Ready,
    responses=error_responses(503),
)
@not_admitted("reads the service's state: a probe must answer under any load")
async def ready(state: State) -> Ready | JSONResponse:
    if (e := state.unavailable()) is not None:
        return error_response(e.status, e.code, e.message, e.headers)
    return Ready(status="ready", models=sorted(state.inference.models))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_key)],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the Prometheus text format"},
        **error_responses(401),
    },
)
@not_admitted("renders the counters: scraped under any load")
async def metrics(state: State) -> Response:
    state.admission.publish_early_refusals()  # this process's own count is exact
    return Response(state.inference.metrics.render(), media_type=CONTENT_TYPE_LATEST)
