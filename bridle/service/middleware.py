"""ASGI middleware around the routes: request ids with JSON 500s, and admission (in-flight bound, drain).

`RequestIds` gives every request an id (the client's `X-Request-ID` when it is a sane token, else a new
one), returns it in the `X-Request-ID` response header, and turns any exception that reaches it into a
JSON 500 naming the id, logged with its traceback under the same id.

`Admission` bounds the requests to the admitted routes in flight across every stage (reading the body,
decoding, waiting for and running a batch): past `max_in_flight` a request is refused at once with 503
`overloaded` and Retry-After, from prepared bytes, before its body is read, so the accepted requests
keep a bounded latency. An admitted request whose client disconnects is cancelled (it leaves the
batching queue before reaching the engine) and frees its slot at once. While the service drains
(SIGTERM) new inference requests get 503 `shutting_down` and `/ready` says so.

Which routes are admitted is declared on each route (`bridle/service/routes/admission.py`: `@admitted` or
`@not_admitted(reason)`); `create_app` collects them into `AdmissionState.routes` (`AdmittedRoutes`),
which this middleware and the protocol's early refusal (`bridle/service/protocol.py`) both read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect

from bridle.runtime import tracing
from bridle.service.errors import ServiceError, error_response, retry_later

log = logging.getLogger("bridle.service")

REQUEST_ID_HEADER = "x-request-id"
CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # ids a client may choose; others are replaced
# a refused request's body up to this size is skipped and the connection kept (a reconnect costs the
# event loop more than skipping a small body); a larger or unknown one gets `Connection: close`
KEEP_ALIVE_BODY_BYTES = 256 * 1024
ADMITTED = "bridle_admitted"  # the request scope's state key of a request this middleware admitted

Scope = dict[str, Any]


def new_request_id() -> str:
    """A fresh request id: 128 random bits as 32 hex digits (ids, not secrets: Python's generator,
    reseeded in every forked process, at a tenth of `uuid4`'s cost, which a refusal flood pays per
    answer)."""
    return f"{random.getrandbits(128):032x}"


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
        request_id = given if given is not None and CLIENT_ID.fullmatch(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        tracing.tag("bridle.request_id", request_id)  # on the server span: from a logged id to its trace
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # a new message: the one given may be shared (the prepared refusals are sent again and
                # again), and adding to it in place would grow its headers on every send
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
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


@dataclass(frozen=True)
class AdmittedRoutes:
    """The paths of the routes declared `@admitted` (bridle/service/routes/admission.py): plain paths, matched
    exactly (also as bytes, for the protocol's head scan), and paths with parameters, as their regexes."""

    paths: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()
    raw: frozenset[bytes] = field(init=False)  # `paths` as bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", frozenset(p.encode() for p in self.paths))

    def __contains__(self, path: object) -> bool:
        return path in self.paths or (isinstance(path, str) and any(p.fullmatch(path) for p in self.patterns))


@dataclass
class AdmissionState:
    """What the admission middleware counts, shared with the routes and the server's signal handling."""

    max_in_flight: int
    retry_after_s: int
    # the routes it bounds: set by `create_app` from the routes' own declarations
    routes: AdmittedRoutes = field(default_factory=AdmittedRoutes)
    in_flight: int = 0
    draining: bool = False
    on_refuse: Callable[[str], None] = lambda cause: None  # "overloaded", "shutting_down", "disconnected"
    on_count: Callable[[int], None] = lambda in_flight: None  # after each admission and release
    # overload refusals answered before the app (bridle/service/protocol.py), per route: counted here as plain
    # ints and handed to `on_refused_early` (route, count) by `publish_early_refusals`, on the server's
    # tick and before /metrics answers. One multiprocess prometheus increment per refusal cost the front
    # end ~8 % of its CPU under a refusal flood.
    early_refusals: Counter[str] = field(default_factory=Counter)
    on_refused_early: Callable[[str, int], None] = lambda route, count: None

    def publish_early_refusals(self) -> None:
        """Hand the refusals counted since the last call to `on_refused_early`."""
        if self.early_refusals:
            counted, self.early_refusals = self.early_refusals, Counter()
            for route, count in counted.items():
                self.on_refused_early(route, count)

    def draining_error(self) -> ServiceError:
        error = retry_later("shutting_down", "the service is stopping", self.retry_after_s)
        error.headers["Connection"] = "close"
        return error


def closes_after_refusal(content_length: str | None) -> bool:
    """Whether a refusal closes the connection: when the unread body is unsized or larger than
    `KEEP_ALIVE_BODY_BYTES` (skipping a small one costs less than the client's reconnect)."""
    return (
        content_length is None or not content_length.isdigit() or int(content_length) > KEEP_ALIVE_BODY_BYTES
    )


def _refusal(
    code: str, message: str, retry_after_s: int, close: bool
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A 503 refusal's headers and JSON body: Retry-After, and Connection: close when the unread body
    would be large (else the connection stays open and the body is skipped)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


def _refusal_messages(code: str, message: str, retry_after_s: int, close: bool) -> list[dict[str, Any]]:
    """The ASGI messages of a 503 refusal, built once."""
    headers, body = _refusal(code, message, retry_after_s, close)
    return [
        {"type": "http.response.start", "status": 503, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


def overloaded_message(state: AdmissionState) -> str:
    return f"{state.max_in_flight} requests are in flight already; retry later"


def refusal_bytes(state: AdmissionState, close: bool) -> tuple[bytes, bytes]:
    """The `overloaded` refusal as HTTP/1.1 bytes, for `bridle/service/protocol.py`: what goes before the
    request id's value (status line, headers, `x-request-id: `), and what goes after the server's own
    headers (the blank line and the body)."""
    headers, body = _refusal("overloaded", overloaded_message(state), state.retry_after_s, close)
    lines = [b"HTTP/1.1 503 Service Unavailable\r\n", *(k + b": " + v + b"\r\n" for k, v in headers)]
    return b"".join([*lines, REQUEST_ID_HEADER.encode(), b": "]), b"\r\n" + body


class Admission:
    """Admits an inference request only while fewer than `max_in_flight` are in flight; else answers
    503 `overloaded` from prepared bytes before the body is read (nothing is decoded, the engine is not
    touched). An admitted request whose client disconnects is cancelled at once: it leaves the batching
    queue before it reaches the engine, and its slot is free for the next client."""

    def __init__(self, app: Any, state: AdmissionState) -> None:
        self.app = app
        self.state = state
        self._overloaded = {
            close: _refusal_messages("overloaded", overloaded_message(state), state.retry_after_s, close)
            for close in (False, True)
        }

    async def _refuse(self, scope: Scope, send: Any) -> None:
        s = self.state
        if s.draining:
            error = s.draining_error()
            s.on_refuse("shutting_down")
            for message in _refusal_messages(error.code, error.message, s.retry_after_s, close=True):
                await send(message)
            return
        s.on_refuse("overloaded")
        close = closes_after_refusal(_header(scope, "content-length"))
        for message in self._overloaded[close]:
            await send(message)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        s = self.state
        if scope["type"] != "http" or scope["path"] not in s.routes:
            await self.app(scope, receive, send)
            return
        with tracing.span("admission") as span:  # admitted or refused at once: the bound never queues
            if span is not None:
                span.set_attribute("bridle.in_flight", s.in_flight)
            if s.draining or s.in_flight >= s.max_in_flight:
                tracing.failed("shutting_down" if s.draining else "overloaded", "refused at admission", span)
                await self._refuse(scope, send)
                return
        await AdmittedRequest(s, scope, receive, send).run(self.app)


class AdmittedRequest:
    """One admitted request, holding a slot of `AdmissionState.in_flight` from its admission until its
    answer's last byte goes out or its client is gone, whichever comes first. After the body is read, a
    watcher waits for the client's disconnect and then cancels the app's work wherever it is."""

    def __init__(self, state: AdmissionState, scope: Scope, receive: Any, send: Any) -> None:
        self.state, self.scope = state, scope
        self._receive, self._send = receive, send
        self.released = False  # the slot is free again
        self.answered = False  # the response's last byte went out (or is going)
        self.dropped = False  # the client went away before its answer
        self.watcher: asyncio.Task[dict[str, Any]] | None = None  # the receive after the body
        self.work: asyncio.Task[None] | None = None  # the app's handling of the request

    async def run(self, app: Any) -> None:
        """Admit the request, run the app on it, and free its slot however the app ends; a cancellation or
        a `ClientDisconnect` that the client's leaving caused ends it quietly."""
        self._admit()
        self.work = asyncio.ensure_future(app(self.scope, self.receive, self.send))
        try:
            await self.work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self.dropped or (current is not None and current.cancelling()):
                raise
        except ClientDisconnect:
            if not self.dropped:
                raise
        finally:
            self.release()
            if self.watcher is not None and not self.watcher.done():
                self.watcher.cancel()
            if not self.work.done():
                self.work.cancel()

    def _admit(self) -> None:
        s = self.state
        s.in_flight += 1
        s.on_count(s.in_flight)
        self.scope.setdefault("state", {})[ADMITTED] = True  # what `uploads_of` checks (routes/deps.py)

    def release(self) -> None:
        """Free the slot (once)."""
        if not self.released:
            self.released = True
            self.state.in_flight -= 1
            self.state.on_count(self.state.in_flight)

    def drop(self) -> None:
        """The client is gone: count it (499 in MetricsMiddleware) and free its slot."""
        self.dropped = True
        self.scope.setdefault("state", {})["dropped"] = True
        self.state.on_refuse("disconnected")
        self.release()

    async def receive(self) -> dict[str, Any]:
        """The app's `receive`: the body's messages; once the body is all here, the watcher takes the next
        message (the disconnect), and a later call waits on it."""
        if self.watcher is not None:  # the body is read: the next message is the disconnect
            return await asyncio.shield(self.watcher)
        message = await self._receive()
        if message["type"] == "http.disconnect":  # gone before its body was all here
            self.drop()  # the route's body read raises ClientDisconnect, which ends the work
        elif not message.get("more_body", False):
            self.watcher = asyncio.ensure_future(self._receive())
            self.watcher.add_done_callback(self._on_watched)
        return message

    def _on_watched(self, done: asyncio.Task[dict[str, Any]]) -> None:
        """The watcher's message: a disconnect before the answer drops the request and cancels its work."""
        if done.cancelled() or self.answered or done.exception() is not None:
            return
        work = self.work
        if done.result()["type"] == "http.disconnect" and work is not None and not work.done():
            self.drop()
            work.cancel()  # stop the work, wherever it is

    async def send(self, message: dict[str, Any]) -> None:
        """The app's `send`: frees the slot before the last byte goes out (a client may send its next
        request as soon as it has this answer, and must find the slot free)."""
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered = True
            self.release()
        await self._send(message)
