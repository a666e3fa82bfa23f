"""What OpenTelemetry traces cost the service: `python -m bench.trace_cost [--clients 16]`.

Starts one `bridle-serve` per configuration on a bundled audio model (`--model`, default `audio-digits`;
subprocesses, their default front ends, no spare engine), all at once, and drives them in turns with wrk:
`--clients` closed-loop connections posting a wav of `--clip` seconds (default 1) to `/classify` back to
back. The configurations:

- `off`: no OTEL_* variable, the baseline;
- `off-again`: the same, a second server: its ratio to `off` is the noise floor, what this machine can
  tell apart at all;
- `on`: OTEL_EXPORTER_OTLP_ENDPOINT names a receiver in this process (bench/otlp_sink.py, which parses each
  export and counts its spans, as a collector beside the service would): every request traced;
- `sampled`: the same with OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1.

The servers take turns, `--rounds` times (the order rotated each round), so they share whatever else loads
the machine; each ratio is the median over the rounds of a configuration's requests per second over `off`'s
in the same round (goal for `on`: >= 0.95). Beside it, the service's CPU time per request (its process
tree), which the machine's load disturbs less: the median over `off`'s, lower is cheaper.

Last, the off path itself: what each tracing helper costs per call with traces off, timed here, times the
calls one request makes, against the service's CPU time per request.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Annotated

import typer

from bench.otlp_sink import OtlpSink
from bench.serve import REPO, Service, cpu_seconds, running_service
from bench.service_load import LoadResult, drive
from bridle.data.media_files import make_audio

LUA = """
local f = assert(io.open(os.getenv("BRIDLE_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.path = "/classify"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "audio/wav"
"""
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
# the tracing helpers one traced /classify of one upload calls (bridle/runtime/tracing.py): read, decode,
# serialise and the front end's engine span (`span`/`client_span`), the run message's `carrier`, the
# engine's `continued`, the batcher's `on` check
OFF_CALLS_PER_REQUEST = {"span": 4, "carrier": 1, "continued": 1, "on": 1}


def configurations(sink_url: str) -> dict[str, dict[str, str]]:
    """Each configuration's environment; the traced ones name themselves (`OTEL_SERVICE_NAME`), so the
    receiver counts each one's spans apart."""
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url}
    return {
        "off": {},
        "off-again": {},
        "on": on | {"OTEL_SERVICE_NAME": "bridle-on"},
        "sampled": on | SAMPLED | {"OTEL_SERVICE_NAME": "bridle-sampled"},
    }


def off_path_ns() -> dict[str, float]:
    """Each tracing helper's cost per call with traces off (this process never starts them), in ns."""
    from bridle.runtime import tracing

    assert not tracing.on()

    def span() -> None:
        with tracing.span("x"):
            pass

    calls = {
        "span": span,
        "carrier": tracing.carrier,
        "continued": lambda: tracing.continued(None, "x"),
        "on": tracing.on,
    }
    n = 200_000
    return {name: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e9 for name, f in calls.items()}


def main(
    clients: Annotated[int, typer.Option(help="closed-loop wrk connections")] = 16,
    seconds: Annotated[float, typer.Option(help="seconds per measurement")] = 5,
    rounds: Annotated[int, typer.Option(help="turns of each configuration")] = 6,
    model: Annotated[str, typer.Option(help="a bundled audio model (models/<model>)")] = "audio-digits",
    clip: Annotated[float, typer.Option(help="seconds of audio per request")] = 1.0,
) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise typer.BadParameter("wrk is not installed: bash scripts/system-deps.sh wrk")
    print(f"{model}, {clip:g} s clips to /classify, {clients} clients, {rounds} rounds of {seconds:g} s")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    env = {"BRIDLE_ENGINE_SPARE": "false", "BRIDLE_QUEUE_SIZE": "4096", "OTEL_BSP_SCHEDULE_DELAY": "500"}
    with (
        OtlpSink(keep=False) as sink,
        tempfile.TemporaryDirectory() as tmp,
        contextlib.ExitStack() as servers,
    ):
        configs = configurations(sink.url)
        services: dict[str, Service] = {
            name: servers.enter_context(
                running_service([REPO / "models" / model], env | extra, ready_timeout_s=300)
            )
            for name, extra in configs.items()
        }
        body = Path(tmp) / "clip.wav"
        body.write_bytes(make_audio("wav", clip, sample_rate=8000))
        served: dict[str, int] = dict.fromkeys(configs, 0)  # requests answered, warm-up included
        for name, service in services.items():  # warm-up: the first requests of each
            served[name] += drive(wrk, service.url, body, clients, 2, 0, LUA).requests
        runs: dict[str, list[LoadResult]] = {name: [] for name in configs}
        cpu: dict[str, list[float]] = {name: [] for name in configs}  # service CPU seconds per request
        names = list(configs)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                service = services[name]
                used = cpu_seconds(service.process.pid)
                result = drive(wrk, service.url, body, clients, seconds, 0, LUA, timeout_s=10)
                used = cpu_seconds(service.process.pid) - used
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors of {result.requests} requests")
                runs[name].append(result)
                cpu[name].append(used / result.requests)
                served[name] += result.requests
                print(
                    f"round {r + 1} {name:>9}: {result.throughput:6.1f} req/s (p50 {result.p50_ms:.0f} ms, "
                    f"p99 {result.p99_ms:.0f} ms, service CPU {cpu[name][-1] * 1e3:.2f} ms per request)"
                )
        time.sleep(2)  # the last exports (OTEL_BSP_SCHEDULE_DELAY)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"the receiver took {sink.exports} exports, {sink.bytes / 1e6:.1f} MB, {sink.span_count} spans")
    for name in ("on", "sampled"):
        spans, requests = sink.by_service[f"bridle-{name}"], served[name]
        print(f"{name}: {spans} spans received for {requests} requests ({spans / requests:.2f} per request)")
    for name in names[1:]:
        each = [x.throughput / o.throughput for x, o in zip(runs[name], runs["off"], strict=True)]
        cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["off"])
        goal = {"on": " (goal >= 0.95)", "sampled": " (goal >= 0.95)"}.get(name, " (the noise floor)")
        rounds_text = ", ".join(f"{x:.3f}" for x in each)
        print(
            f"RATIO {name} / off = {statistics.median(each):.3f}{goal}: rounds {rounds_text}; "
            f"service CPU per request {cpu_ratio:.3f}x off's"
        )
    per_call = off_path_ns()
    per_request_ns = sum(per_call[k] * n for k, n in OFF_CALLS_PER_REQUEST.items())
    off_cpu_ns = statistics.median(cpu["off"]) * 1e9
    print(
        "off path: "
        + ", ".join(f"{k} {v:.0f} ns" for k, v in per_call.items())
        + f" per call; {per_request_ns:.0f} ns per request = {per_request_ns / off_cpu_ns:.5%} of the "
        f"service's {off_cpu_ns / 1e6:.2f} ms CPU per request"
    )


if __name__ == "__main__":
    typer.run(main)
