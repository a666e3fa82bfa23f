"""OpenTelemetry traces (bridle/runtime/tracing.py) against a real OTLP/HTTP receiver started here
(bench/otlp_sink.py: an HTTP server that decodes the protobuf `ExportTraceServiceRequest`s the service's
exporters post).

- A real `bridle-serve` with a front-end process and the engine process (`BRIDLE_FRONTENDS=1`), told
  `OTEL_EXPORTER_OTLP_ENDPOINT`: one `/classify` with a client's `traceparent` gives spans from both
  processes under the client's trace id, each under the parent the module docstring of tracing.py draws,
  the server span under the client's span; without `traceparent` the request starts a trace of its own;
  a `traceparent` that says "not sampled" is honoured (nothing is exported for it).
- One process (`BRIDLE_FRONTENDS=0`): `queue` and `run` hang under the server span with the other steps.
- Off (no OTEL_* variable): a served request imports nothing of the OpenTelemetry SDK.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.otlp_sink import OtlpSink, Span, render
from bench.serve import REPO, Service, running_service
from bridle.runtime.tracing import TraceConfig

FRONT_END_STEPS = {"admission", "read", "decode", "engine", "serialise"}  # under the server span
ENGINE_STEPS = {"queue", "run"}  # under engine.run, in the engine process


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as receiver:
        yield receiver


@contextlib.contextmanager
def traced(model_dir: Path, sink: OtlpSink, frontends: int) -> Iterator[Service]:
    """`bridle-serve` over `model_dir` exporting its spans to `sink`."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s (default 5 s)
        "OTEL_SERVICE_NAME": "bridle-test",
        "BRIDLE_FRONTENDS": str(frontends),
        "BRIDLE_ENGINE_SPARE": "false",
        "BRIDLE_PROVIDERS": "CPUExecutionProvider",
        "BRIDLE_INTRA_OP_THREADS": "1",
    }
    with running_service([model_dir], env, ready_timeout_s=180) as service:
        yield service


@pytest.fixture(scope="module")
def two_processes(model_root: Path, sink: OtlpSink) -> Iterator[Service]:
    with traced(model_root / "audio", sink, frontends=1) as service:
        yield service


def classify(url: str, media: tuple[bytes, str], traceparent: str | None = None) -> httpx.Response:
    data, content_type = media
    headers = {"Content-Type": content_type} | ({"traceparent": traceparent} if traceparent else {})
    response = httpx.post(f"{url}/classify", content=data, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


def complete(names: set[str]):
    """A `wait_for` condition: every span named in `names` has arrived for the trace of the first of them."""

    def done(spans: list[Span]) -> bool:
        return names <= {s.name for s in spans}

    return done


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}:\n{render(spans)}"
    return found[0]


def test_one_classify_is_one_trace_across_the_front_end_and_the_engine(
    two_processes: Service, sink: OtlpSink, media_files
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    response = classify(two_processes.url, media_files["wav"], f"00-{trace_id}-{client_span}-01")
    names = {"POST /classify", "engine.run"} | FRONT_END_STEPS | ENGINE_STEPS
    sink.wait_for(lambda _: names <= {s.name for s in sink.trace(trace_id)})
    spans = sink.trace(trace_id)
    dump = render(spans)

    server = one(spans, "POST /classify")
    assert (server.parent_id, server.kind) == (client_span, "SERVER"), dump  # the client's traceparent
    assert server.attributes["http.route"] == "/classify", dump
    assert server.attributes["http.response.status_code"] == 200, dump
    assert server.attributes["bridle.request_id"] == response.headers["x-request-id"], dump
    for name in FRONT_END_STEPS:
        assert one(spans, name).parent_id == server.span_id, dump
    engine_call = one(spans, "engine")
    in_engine = one(spans, "engine.run")
    assert (engine_call.kind, in_engine.kind) == ("CLIENT", "SERVER"), dump
    assert in_engine.parent_id == engine_call.span_id, dump  # the context crossed the engine link
    for name in ENGINE_STEPS:
        assert one(spans, name).parent_id == in_engine.span_id, dump
    queue, run = one(spans, "queue"), one(spans, "run")
    assert queue.end_ns <= run.start_ns + 1000 and run.attributes["bridle.batch.rows"] >= 1, dump

    # two processes, each exporting its own spans
    front_end = {s.resource["process.pid"] for s in spans if s.name not in ENGINE_STEPS | {"engine.run"}}
    engine = {s.resource["process.pid"] for s in spans if s.name in ENGINE_STEPS | {"engine.run"}}
    assert len(front_end) == len(engine) == 1 and front_end != engine, dump
    assert {s.resource["bridle.process"] for s in spans} == {"front-end", "engine"}, dump
    assert {s.resource["service.name"] for s in spans} == {"bridle-test"}, dump
    # causal order: the engine's work starts after the front end's call began (the engine's answer is
    # written before its span ends, so the front end may finish first), the front end's steps within its
    # server span
    assert engine_call.start_ns <= in_engine.start_ns <= queue.start_ns, dump
    front = [s for s in spans if s.resource["bridle.process"] == "front-end"]
    assert all(server.start_ns <= s.start_ns and s.end_ns <= server.end_ns for s in front), dump


def test_a_request_without_traceparent_starts_its_own_trace(
    two_processes: Service, sink: OtlpSink, media_files
) -> None:
    request_id = secrets.token_hex(8)
    data, content_type = media_files["wav"]
    response = httpx.post(
        f"{two_processes.url}/classify",
        content=data,
        headers={"Content-Type": content_type, "X-Request-ID": request_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text

    def server_span(spans: list[Span]) -> Span | None:
        found = [s for s in spans if s.name == "POST /classify" and s.parent_id is None]
        # the newest root: other tests' requests went before
        return max(found, key=lambda s: s.start_ns) if found else None

    sink.wait_for(lambda spans: server_span(spans) is not None)
    root = server_span(sink.spans)
    assert root is not None
    sink.wait_for(lambda _: {"engine.run", "run"} <= {s.name for s in sink.trace(root.trace_id)})
    spans = sink.trace(root.trace_id)
    assert one(spans, "engine.run").resource["bridle.process"] == "engine", render(spans)


def test_an_unsampled_traceparent_is_honoured(two_processes: Service, sink: OtlpSink, media_files) -> None:
    trace_id = secrets.token_hex(16)
    classify(two_processes.url, media_files["wav"], f"00-{trace_id}-{secrets.token_hex(8)}-00")
    marker = secrets.token_hex(
        16
    )  # a sampled request after it: once its spans are in, so would the first's be
    classify(two_processes.url, media_files["wav"], f"00-{marker}-{secrets.token_hex(8)}-01")
    sink.wait_for(lambda _: {"engine.run", "POST /classify"} <= {s.name for s in sink.trace(marker)})
    assert sink.trace(trace_id) == []


def test_one_process_hangs_queue_and_run_under_the_route(
    model_root: Path, sink: OtlpSink, media_files
) -> None:
    trace_id = secrets.token_hex(16)
    with traced(model_root / "audio", sink, frontends=0) as service:
        classify(service.url, media_files["wav"], f"00-{trace_id}-{secrets.token_hex(8)}-01")
        sink.wait_for(lambda _: {"queue", "run", "POST /classify"} <= {s.name for s in sink.trace(trace_id)})
    spans = sink.trace(trace_id)
    server = one(spans, "POST /classify")
    for name in {"admission", "read", "decode", "queue", "run", "serialise"}:
        assert one(spans, name).parent_id == server.span_id, render(spans)
    assert not {"engine", "engine.run"} & {s.name for s in spans}, render(spans)
    assert {s.resource["bridle.process"] for s in spans} == {"server"}


def test_off_imports_nothing_of_the_sdk(model_root: Path, media_files) -> None:
    """No OTEL_* variable: an app answers a request and no module of the OpenTelemetry SDK or exporter is
    loaded (in a fresh interpreter, which the test session's imports cannot mask)."""
    script = f"""
import sys
import time
from fastapi.testclient import TestClient
from bridle.service.app import create_app
from bridle.service.settings import Settings
settings = Settings(
    model_dirs=[{str(model_root / "audio")!r}], providers=["CPUExecutionProvider"], frontends=0
)
with TestClient(create_app(settings)) as client:
    deadline = time.monotonic() + 120
    while client.get("/ready").status_code != 200:  # warming up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = client.post("/classify", content=open({_wav(model_root)!r}, "rb").read(),
                    headers={{"Content-Type": "audio/wav"}})
    assert r.status_code == 200, r.text
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
print("loaded:", loaded)
assert not loaded
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _wav(model_root: Path) -> str:
    from bridle.data.media_files import make_audio

    path = model_root / "trace-off.wav"
    if not path.exists():
        path.write_bytes(make_audio("wav", 0.3))
    return str(path)


@pytest.mark.parametrize(
    ("environ", "endpoint", "on"),
    [
        ({}, None, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318", True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "http://c:4318/v1/traces", True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, None, False),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"},
            "http://c:4318",
            False,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
            "http://c:4318",
            False,
        ),
    ],
)
def test_the_standard_variables_turn_traces_on(
    environ: dict[str, str], endpoint: str | None, on: bool
) -> None:
    config = TraceConfig.from_env(environ)
    assert (config.endpoint, config.on) == (endpoint, on)
