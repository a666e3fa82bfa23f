"""ASGI middleware around the routes: request ids with JSON 500s, and admission (in-flight bound, drain).

`RequestIds` gives every request an id (the client's `X-Request-ID` when it is a sane token, else a new
one), returns it in the `X-Request-ID` response header, and turns any exception that reaches it into a
JSON 500 naming the id, logged with its traceback under the same id.

`Admission` bounds the inference requests in flight across every stage (reading the body, decoding,
waiting for and running a batch): past `max_in_flight` a request is refused at once with 503
`overloaded` and Retry-After, before its body is read, so the accepted requests keep a bounded latency.
While the service drains (SIGTERM) new inference requests get 503 `shutting_down` and `/ready` says so.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from service.errors import ServiceError, error_response, retry_later

log = logging.getLogger("bridle.service")

REQUEST_ID_HEADER = "x-request-id"
CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # ids a client may choose; others are replaced
ADMITTED_PATHS = frozenset({"/embed", "/tokenize", "/classify"})

Scope = dict[str, Any]


def _header(scope: Scope, name: str) -> str | None:
    raw = name.encode()
    for key, value in scope.get("headers", ()):
        if key.lower() == raw:
            return value.decode("latin-1")
    return None


class RequestIds:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = given if given is not None and CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s failed: %s %s", request_id, scope["method"], scope["path"])
            if started:  # the status is gone already: the client sees a cut response
                raise
            response = error_response(
                500,
                "internal",
                f"an unexpected error; quote request id {request_id} when reporting it",
                {"X-Request-ID": request_id},
            )
            await response(scope, receive, send)


@dataclass
class AdmissionState:
    """What the admission middleware counts, shared with the routes and the server's signal handling."""

    max_in_flight: int
    retry_after_s: int
    in_flight: int = 0
    draining: bool = False

    def draining_error(self) -> ServiceError:
        error = retry_later("shutting_down", "the service is stopping", self.retry_after_s)
        error.headers["Connection"] = "close"
        return error


class Admission:
    def __init__(self, app: Any, state: AdmissionState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in ADMITTED_PATHS:
            await self.app(scope, receive, send)
            return
        s = self.state
        refusal = s.draining_error() if s.draining else None
        if refusal is None and s.in_flight >= s.max_in_flight:
            refusal = retry_later(
                "overloaded", f"{s.max_in_flight} requests are in flight already", s.retry_after_s
            )
            refusal.headers["Connection"] = "close"  # the server need not read the unwanted body
        if refusal is not None:
            response = error_response(refusal.status, refusal.code, refusal.message, refusal.headers)
            await response(scope, receive, send)
            return
        s.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                s.in_flight -= 1

        async def send_and_release(message: dict[str, Any]) -> None:
            # free the slot before the last byte goes out: a client may send its next request as soon
            # as it has this answer, and must find the slot free
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()
