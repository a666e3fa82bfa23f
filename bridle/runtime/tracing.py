"""OpenTelemetry traces of the service's requests, off unless asked.

On when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and
`OTEL_SDK_DISABLED` is not `true` (`TraceConfig`). Then `start(role)` gives each process (a front end, the
engine, the one-process server) an SDK tracer provider that exports its own spans over OTLP/HTTP (protobuf)
from a batch span processor's thread. The OpenTelemetry SDK reads the other standard variables itself:
the sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; by default every trace, or as its parent
says), `OTEL_SERVICE_NAME` (default `bridle`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_BSP_*`.

The spans of one inference request, in a front-end process (F) and the engine process (E):

    POST /classify        F  FastAPI's server span; a client's `traceparent` header is its parent
      admission           F  the in-flight bound admits the request (or refuses it: 503)
      read                F  the request body read into uploads
      decode              F  per upload: sniffed, decoded and windowed
      engine              F  per batch-sized part: a ring slot, then the round trip to the engine
        engine.run        E  the part in the engine; its parent came in the run message (`carrier`)
          queue           E  waiting in the graph's batcher for a batch
          run             E  the batch's ONNX Runtime call (its rows and requests as attributes)
      serialise           F  the answer built, checked and rendered

In one process (`BRIDLE_FRONTENDS=0`) `queue` and `run` hang under the server span, with no engine spans.
FastAPI's own operation spans (dependencies, endpoint) are off: these cover the route's work. A request
the sampler leaves out costs FastAPI's one non-recording span and none of these.

Each process exports its own spans, so nothing needs to come back in the engine's answer: the front end's
spans after it (serialise) are in the same trace because its context never changed.

Off, the SDK is never imported (only the API, which FastAPI imports anyway): `span()`, `client_span()` and
`continued()` hand back one shared no-op context manager, `inside()` just calls the work it is given,
`carrier()` None, and `record()`, `tag()` and `failed()` return at once: a module-global check each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

log = logging.getLogger("bridle.runtime")
T = TypeVar("T")

_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()
_tracer: Tracer | None = None  # set by `start` when tracing is on: every helper below checks it first
_provider: TracerProvider | None = None


@dataclass(frozen=True)
class TraceConfig:
    """What turns traces on: the standard OpenTelemetry variables (the SDK reads the rest itself)."""

    endpoint: str | None  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT
    disabled: bool = False  # OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TraceConfig:
        endpoint = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or ""
        ).strip()
        disabled = (
            environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
            or environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
        )
        return cls(endpoint or None, disabled)

    @property
    def on(self) -> bool:
        return self.endpoint is not None and not self.disabled


def start(role: str, config: TraceConfig | None = None) -> TracerProvider | None:
    """Turn traces on in this process when `config` (the environment's) asks: its provider, exporting
    over OTLP/HTTP, with `bridle.process=role` on every span; None when off. Once per process: a later
    call returns the same provider. A provider set up before (e.g. by `opentelemetry-instrument`) is used
    as it is."""
    global _tracer, _provider
    if _provider is not None:
        return _provider
    config = config or TraceConfig.from_env()
    if not config.on:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    existing = trace.get_tracer_provider()
    if isinstance(existing, SdkTracerProvider):
        provider = existing
    else:
        resource = Resource.create({"bridle.process": role, "process.pid": os.getpid()})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "bridle"}))
        provider = SdkTracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER[_ARG]
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_*
        trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("bridle")
    log.info("traces on (%s): OTLP/HTTP to %s", role, config.endpoint)
    return provider


def on() -> bool:
    return _tracer is not None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span around a step, child of the current one (yields the span; None when off, or when the current
    span records nothing: a request the sampler left out costs no span of ours)."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def client_span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A span around a call to another process (kind CLIENT); `carrier()` inside it names it as the parent.
    None, as `span`, when off or outside a recording span."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return _NOTHING
    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def carrier() -> dict[str, str] | None:
    """The current span as W3C trace context headers (`traceparent`, and `tracestate` when there is one),
    for a message to another process; None when off or outside a recording span (the other process then
    records nothing either)."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def continued(
    headers: Mapping[str, str] | None, name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A span (kind SERVER) continuing the trace whose context another process sent (`carrier`); a
    message without one starts no span."""
    if _tracer is None or not headers:
        return _NOTHING
    parent = propagate.extract(headers)
    return _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)


def inside(
    span: contextlib.AbstractContextManager[Any], work: Callable[..., Coroutine[Any, Any, T]], *args: Any
) -> Coroutine[Any, Any, T]:
    """`work(*args)` run inside `span` (one of the above), for a task or `gather`: the span is current in
    it and ends when it does; just `work(*args)` when the span is the no-op one. (The coroutine is made
    inside: a task cancelled before it starts leaves no coroutine that was never awaited.)"""
    if span is _NOTHING:
        return work(*args)
    return _inside(span, work, *args)


async def _inside(
    span: contextlib.AbstractContextManager[Any], work: Callable[..., Coroutine[Any, Any, T]], *args: Any
) -> T:
    with span:
        return await work(*args)


def tag(key: str, value: Any) -> None:
    """An attribute on the current span, when it records; nothing when off."""
    if _tracer is not None:
        trace.get_current_span().set_attribute(key, value)  # a span that records nothing ignores it


def failed(code: str, message: str, span: Span | None = None) -> None:
    """Mark `span` (None: the current one) as failed, with the service's error code; nothing when off."""
    if _tracer is None:
        return
    span = span or trace.get_current_span()
    span.set_attribute("error.type", code)
    span.set_status(StatusCode.ERROR, message)


def record(name: str, start: float, end: float, attributes: Mapping[str, Any] | None = None) -> None:
    """A span that has already happened, child of the current one: from `start` to `end`, two
    `time.monotonic()` readings (the batcher's, taken on its own task, where no span is current)."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return
    now_ns, now = time.time_ns(), time.monotonic()
    begun = _tracer.start_span(name, start_time=now_ns - int((now - start) * 1e9), attributes=attributes)
    begun.end(end_time=now_ns - int((now - end) * 1e9))
