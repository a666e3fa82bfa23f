"""The HTTP protocol: uvicorn's httptools protocol, with the overload refusal answered inside it.

A request past the in-flight bound (`service/middleware.py`'s `AdmissionState`) is refused as soon as
its headers are parsed: the prepared 503 bytes are written to the socket from the parser's callback, and
the request's body is skipped as it arrives. No ASGI task, no scope for the app, no middleware runs: a
refusal costs the event loop one parser callback, so a flood of refusals leaves the loop to the admitted
requests. The admission middleware stays the authority for what it admits (it checks again, and counts
the requests in flight); this is only its fast path.

Used by `bridle-serve` in one process and by every front end of `BRIDLE_FRONTENDS=N`. Where httptools is
missing (uvicorn then parses with h11), or with `BRIDLE_WORKERS > 1`, the middleware refuses alone.
"""

from __future__ import annotations

import uuid
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:  # no httptools: uvicorn parses with h11, and the middleware refuses alone
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from service.middleware import ADMITTED_PATHS, AdmissionState, closes_after_refusal, refusal_bytes


def http_protocol(admission: AdmissionState) -> type | str:
    """What uvicorn's `http` option gets: the refusing httptools protocol, or "auto" without httptools."""
    return "auto" if HttpToolsProtocol is None else refusing_protocol(admission)


def refusing_protocol(admission: AdmissionState) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class, answering `admission`'s overload refusals itself."""
    overloaded = {close: refusal_bytes(admission, close) for close in (False, True)}

    class RefusingProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            scope = cycle.scope
            if (
                admission.draining
                or admission.in_flight < admission.max_in_flight
                or scope["path"] not in ADMITTED_PATHS
            ):
                super()._start_asgi_task(cycle, app)
                return
            admission.on_refuse("overloaded")
            admission.on_answered_early(scope["path"], 503)
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            close = closes_after_refusal(None if length is None else length.decode("latin-1"))
            head, body = overloaded[close]
            server = [k + b": " + v + b"\r\n" for k, v in self.server_state.default_headers]
            self.transport.write(b"".join([head, uuid.uuid4().hex.encode(), b"\r\n", *server, body]))
            cycle.response_complete = True  # the parser's body callbacks now skip this request's body
            if close or not cycle.keep_alive:
                self.transport.close()
                return
            self.on_response_complete()

    return RefusingProtocol
