"""A small OTLP/HTTP trace receiver: what an OpenTelemetry collector is to `bridle-serve`, for the tracing
test (tests/service/test_tracing.py) and the tracing benchmark (bench/trace_cost.py).

`OtlpSink()` listens on loopback (a port of its own) in a thread and answers `POST /v1/traces` as a
collector does: it decodes each protobuf `ExportTraceServiceRequest` (opentelemetry-proto) into `Span`s
and answers an empty `ExportTraceServiceResponse`. With `keep=False` it only counts them (the benchmark,
where thousands a second arrive). `render(spans)` draws one trace as an
indented tree, each span with its process, its times from the trace's start and its attributes.

    with OtlpSink() as sink:  # OTEL_EXPORTER_OTLP_ENDPOINT=sink.url
        ...
        spans = sink.wait_for(lambda spans: ..., within=30)
        print(render(sink.trace(trace_id)))
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class Span:
    """One span as the receiver got it; ids in hex, times in ns since the epoch."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL...
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]  # the exporting process's: service.name, bridle.process, process.pid
    status: str  # UNSET, OK, ERROR

    @property
    def process(self) -> str:
        return f"{self.resource.get('bridle.process', '?')} pid {self.resource.get('process.pid', '?')}"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind is not None else None


def parse(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def count(request: ExportTraceServiceRequest) -> Counter[str]:
    """The spans of one export by the exporting process's `service.name`."""
    counts: Counter[str] = Counter()
    for r in request.resource_spans:
        name = next((_value(kv.value) for kv in r.resource.attributes if kv.key == "service.name"), "?")
        counts[name] += sum(len(s.spans) for s in r.scope_spans)
    return counts


def decode(request: ExportTraceServiceRequest) -> list[Span]:
    """The spans of one `ExportTraceServiceRequest`."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        kind=ProtoSpan.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        resource=resource,
                        status=s.status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_"),
                    )
                )
    return spans


@dataclass
class OtlpSink:
    keep: bool = True  # False: count the spans, keep none
    spans: list[Span] = field(default_factory=list)
    span_count: int = 0
    by_service: Counter[str] = field(default_factory=Counter)  # spans received by `service.name`
    exports: int = 0  # export requests received
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT takes it (the exporter adds /v1/traces)."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OtlpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the exporter keeps its connection

            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != TRACES_PATH:
                    self._answer(404, b"")
                    return
                sink._received(body)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-sink").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _received(self, body: bytes) -> None:
        request = parse(body)
        spans = decode(request) if self.keep else []
        with self._lock:
            self.exports += 1
            self.bytes += len(body)
            counts = count(request)
            self.span_count += counts.total()
            self.by_service.update(counts)
            self.spans.extend(spans)

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[Span]], bool], within: float = 30.0) -> list[Span]:
        """Poll until `done(spans received so far)`; those spans (AssertionError after `within` s)."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            names = sorted(s.name for s in spans)
            assert time.monotonic() < deadline, f"not received within {within} s: {names}"
            time.sleep(0.05)


def render(spans: list[Span]) -> str:
    """One trace as a tree: each span under its parent, in start order, with its process, its start and
    end in ms from the trace's first span, its kind and attributes. A span whose parent is not among
    `spans` (a client's, given in `traceparent`) is a root, and says whose child it is."""
    if not spans:
        return "(no spans)"
    t0 = min(s.start_ns for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for s in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        children.setdefault(s.parent_id if s.parent_id in ids else None, []).append(s)
    lines = [f"trace {spans[0].trace_id}"]

    def draw(span: Span, depth: int) -> None:
        start, end = (span.start_ns - t0) / 1e6, (span.end_ns - t0) / 1e6
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(span.attributes.items()))
        parent = f" parent={span.parent_id} (not exported here)" if depth == 0 and span.parent_id else ""
        status = f" {span.status}" if span.status != "UNSET" else ""
        lines.append(
            f"{'  ' * depth}{span.name}  [{span.process}] {span.kind}{status}"
            f"  {start:8.2f} .. {end:8.2f} ms ({end - start:.2f} ms)  span={span.span_id}{parent}"
        )
        if attrs:
            lines.append(f"{'  ' * depth}    {attrs}")
        for child in children.get(span.span_id, []):
            draw(child, depth + 1)

    for root in children.get(None, []):
        draw(root, 0)
    return "\n".join(lines)
