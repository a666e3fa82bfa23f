"""The HTTP protocol: uvicorn's httptools protocol, with the overload refusal answered inside it.

A request past the in-flight bound (`bridle/service/middleware.py`'s `AdmissionState`) is refused before the
HTTP parser sees it. When a chunk of bytes arrives between two requests and the service is at its bound,
`data_received` looks for the request's head in the chunk itself: a plain HTTP/1.1 request line to an
admitted route, a `Content-Length`, nothing that needs the parser (chunked bodies, `Expect`, upgrades).
It then writes the prepared 503 bytes and skips the body as it arrives. No parser callback, no ASGI
task, no scope, no middleware: a refusal costs the event loop a few byte searches and one write, so a
flood of refusals leaves the loop to the admitted requests. It is counted in a plain int (published to the
metrics on the server's tick), and uvicorn's keep-alive timer is left armed rather than re-armed for each
refusal (`timeout_keep_alive_handler` checks, when it fires, whether a refusal came since).

Any request the scan does not recognise (a head split across chunks, a chunked body, a malformed line)
goes to the parser as usual and is refused a step later, when its headers are parsed (`_start_asgi_task`,
still without an ASGI task). The admission middleware stays the authority for what it admits (it checks
again, and counts the requests in flight); both paths here are its fast paths.

Used by `bridle-serve` in one process and by every front end of `BRIDLE_FRONTENDS=N`. Where httptools is
missing (uvicorn then parses with h11), or with `BRIDLE_WORKERS > 1`, the middleware refuses alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:  # no httptools: uvicorn parses with h11, and the middleware refuses alone
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from bridle.service.middleware import (
    AdmissionState,
    closes_after_refusal,
    new_request_id,
    refusal_bytes,
)

# header names after which only the parser knows where the request ends, or what the client expects
NEEDS_PARSER = (b"\r\ntransfer-encoding:", b"\r\nexpect:", b"\r\nupgrade:")
CONTENT_LENGTH = b"\r\ncontent-length:"
CONNECTION = b"\r\nconnection:"


def http_protocol(admission: AdmissionState) -> type | str:
    """What uvicorn's `http` option gets: the refusing httptools protocol, or "auto" without httptools."""
    return "auto" if HttpToolsProtocol is None else refusing_protocol(admission)


class PlainRequest(NamedTuple):
    """A request whose end the refusal can find without the parser."""

    path: str
    size: int  # head and body, in bytes
    asks_close: bool  # `Connection: close`
    content_length: int


def plain_request(chunk: bytes, routes: frozenset[bytes]) -> PlainRequest | None:
    """The plain HTTP/1.1 request to one of `routes` (the admitted paths, as bytes) at the start of
    `chunk`, if its whole head is there; None when only the parser can tell where the request ends or
    what it asks (or the path has parameters: `_start_asgi_task` refuses those)."""
    end = chunk.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = chunk.find(b"\r\n")
    request_line = chunk[:line_end].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return None
    path = request_line[1].partition(b"?")[0]
    if path not in routes:
        return None
    fields = chunk[line_end:end].lower()
    if any(name in fields for name in NEEDS_PARSER) or fields.count(CONTENT_LENGTH) > 1:
        return None
    length = 0
    at = fields.find(CONTENT_LENGTH)
    if at >= 0:
        value = fields[at + len(CONTENT_LENGTH) :].partition(b"\r\n")[0].strip()
        if not value.isdigit():
            return None
        length = int(value)
    at = fields.find(CONNECTION)
    asks_close = at >= 0 and b"close" in fields[at + len(CONNECTION) :].partition(b"\r\n")[0]
    return PlainRequest(path.decode(), end + 4 + length, asks_close, length)


def refusing_protocol(admission: AdmissionState) -> type[RefusingProtocol]:
    """uvicorn's httptools protocol class, answering `admission`'s overload refusals itself."""
    bound = {"admission": admission, "refusals": PreparedRefusals(admission)}
    return type("RefusingProtocol", (RefusingProtocol,), bound)


class PreparedRefusals:
    """The overload 503 of one admission state as the bytes to write: prepared once, with a new request id
    in each, and uvicorn's default headers (renewed each second) joined once per renewal."""

    def __init__(self, admission: AdmissionState) -> None:
        self.overloaded = {close: refusal_bytes(admission, close) for close in (False, True)}
        self.defaults: Any = None  # the server's default headers last seen, and them as bytes
        self.defaults_bytes = b""

    def answer(self, close: bool, defaults: list[tuple[bytes, bytes]]) -> bytes:
        """The refusal to write, for a connection that closes after it when `close`."""
        if defaults is not self.defaults:
            self.defaults = defaults
            self.defaults_bytes = b"".join(k + b": " + v + b"\r\n" for k, v in defaults)
        head, body = self.overloaded[close]
        return b"".join([head, new_request_id().encode(), b"\r\n", self.defaults_bytes, body])


_HttpTools: Any = object if HttpToolsProtocol is None else HttpToolsProtocol  # used only with httptools


class RefusingProtocol(_HttpTools):
    """uvicorn's httptools protocol with the overload refusal inside it (the module's docstring).
    `refusing_protocol` binds it to an admission state: a subclass with `admission` and `refusals` set."""

    admission: AdmissionState
    refusals: PreparedRefusals
    _between = True  # the parser is between two requests
    _skip = 0  # bytes of a refused request's body still to come
    _active_at = 0.0  # the loop's time when a refused request's bytes last came

    def on_message_begin(self) -> None:
        self._between = False
        super().on_message_begin()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between = True

    def data_received(self, data: bytes) -> None:
        """Skip a refused request's body, refuse the plain requests at the bound, parse the rest."""
        if self._skip:
            data = self._skip_refused_body(data)
        if data:
            data = self._refuse_plain_requests(data)
        if data:
            super().data_received(data)

    def _skip_refused_body(self, data: bytes) -> bytes:
        """What of `data` follows the body of a request refused already."""
        self._active_at = self.loop.time()
        if len(data) <= self._skip:
            self._skip -= len(data)
            return b""
        data, self._skip = data[self._skip :], 0
        return data

    def _refuse_plain_requests(self, data: bytes) -> bytes:
        """Refuse each plain request at the start of `data` while the service is at its bound; what is
        left for the parser (nothing when the connection closes or all of `data` was refused)."""
        while self._between and self._at_bound():
            request = plain_request(data, self.admission.routes.raw)
            if request is None:
                break
            self._active_at = self.loop.time()
            self._skip = max(0, request.size - len(data))
            data = data[request.size :]
            close = request.asks_close or closes_after_refusal(str(request.content_length))
            self._refuse(request.path, close)
            if close:
                return b""
            self._count_answered()
            if not data:
                return b""
        return data

    def _at_bound(self) -> bool:
        """Whether a request now would be refused as overloaded and may be answered at once: no earlier
        request on this connection still waits for its answer."""
        admission = self.admission
        return (
            not admission.draining
            and admission.in_flight >= admission.max_in_flight
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        )

    def _count_answered(self) -> None:
        """What uvicorn's on_response_complete does after a refusal the parser never saw (nothing is
        pipelined and reading is not paused between two requests), with the keep-alive timer left as is."""
        self.server_state.total_requests += 1
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn closes a connection idle for `timeout_keep_alive`. The refusals above keep a connection
        busy without cancelling and re-arming that timer for each one (~7 % of a refusal's CPU): the timer
        checks when it fires, and waits on if a refusal came since."""
        idle = self.loop.time() - self._active_at
        if idle < self.timeout_keep_alive and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive - idle, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Refuse a parsed request at the bound without starting its ASGI task; start the others."""
        admission, scope = self.admission, cycle.scope
        if (
            admission.draining
            or admission.in_flight < admission.max_in_flight
            or scope["path"] not in admission.routes
        ):
            super()._start_asgi_task(cycle, app)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        close = closes_after_refusal(None if length is None else length.decode("latin-1"))
        cycle.response_complete = True  # the parser's body callbacks now skip this request's body
        close = close or not cycle.keep_alive
        self._refuse(scope["path"], close)
        if not close:
            self.on_response_complete()  # it may start a pipelined request, or resume reading

    def _refuse(self, path: str, close: bool) -> None:
        """Write the prepared 503 with a new request id and the server's headers, count it, and close the
        connection if `close`."""
        self.admission.early_refusals[path] += 1  # published to the metrics on the server's tick
        self.transport.write(self.refusals.answer(close, self.server_state.default_headers))
        if close:
            self.transport.close()
