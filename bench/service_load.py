"""Load test of the inference service: `python -m bench.service_load [--model-dir DIR] [--seconds S]`.

Starts `bridle-serve` on loopback (a subprocess) with an audio model directory (default: the bundled
`models/audio-digits`, else a freshly exported tiny-audio model) and drives `POST /embed` with wrk
(Debian's `wrk`; `make bench-service` installs it): closed-loop clients, each posting a one-window wav
back to back. wrk is C and event-driven, so on the same cores it takes ~1 % of a core, where a Python
client took more than half of them. It prints, from one run:

1. service throughput at saturation / in-process ONNX Runtime throughput on the same model and batch
   size (goal >= 0.85). The in-process figure is the best of one run at a time or `concurrent_runs`
   at once (the service's setting), ORT's default threads or one thread per run, idle threads spinning
   or not;
2. throughput with dynamic batching / without (max_batch_size=1, all else equal) at 16 clients
   (goal >= 1.5), and beside it the most batching could give here: in-process ORT at the batch size
   over in-process ORT at batch 1, with the same concurrency;

each with p50 and p99 latency; and
3. overload: 400 closed-loop clients (raw asyncio sockets), with the service's in-flight bound and
   without one (every request admitted, as before the bound): the share of requests answered (2xx or
   503) within 2 s (goal >= 99 %) and the served requests' p99 (goal < 2 s).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.serve import running_service
from bridle.model.manifest import read_manifest
from bridle.runtime.models import load_model
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from bridle.service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BUNDLED_AUDIO = REPO / "models" / "audio-digits"
WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BRIDLE_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "audio/wav"
"""


@dataclass
class LoadResult:
    """What wrk measured: completed 2xx requests per second and latency percentiles."""

    throughput: float  # 2xx responses per second
    errors: int  # non-2xx responses and socket errors
    p50_ms: float
    p99_ms: float
    requests: int = 0  # answers of any status
    timeouts: int = 0  # requests wrk gave up on (no answer within its timeout)
    client_cores: float = 0.0  # the CPU wrk itself used (it shares the machine with the service)

    def line(self, label: str) -> str:
        return (
            f"{label:<58} {self.throughput:8.1f} req/s   p50 {self.p50_ms:7.1f} ms   "
            f"p99 {self.p99_ms:7.1f} ms   ({self.errors} errors)"
        )


def wav_bytes(samples: int, rate: int, seed: int = 0) -> bytes:
    """A 16-bit PCM mono wav of `samples` samples of noise."""
    pcm = (np.random.default_rng(seed).uniform(-0.3, 0.3, samples) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def export_tiny_audio(root: Path) -> Path:
    from bridle.export.model_dir import export_model_dir
    from bridle.model.checkpoint import build_servable
    from bridle.model.config import preset

    servable = build_servable(preset("tiny-audio"), labels=["a", "b"])
    return export_model_dir(servable, root / "tiny-audio", name="tiny-audio", run_verify=False).model_dir


@contextmanager
def serve(model_dir: Path, env: dict[str, str], ready_timeout_s: float = 120):
    """`bridle-serve` over `model_dir` with `env` added to the environment; yields its URL."""
    with running_service([model_dir], {"BRIDLE_QUEUE_SIZE": "4096", **env}, ready_timeout_s) as service:
        yield service.url


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> LoadResult:
    """Successful requests per second, the 50 % and 99 % latencies and the errors of `wrk --latency`."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (done and p50 and p99):
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = failed + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0)
    seconds = _duration_ms(done.group(2) + done.group(3)) / 1000
    return LoadResult(
        (int(done.group(1)) - failed) / seconds,
        errors,
        _duration_ms(p50.group(1)),
        _duration_ms(p99.group(1)),
        requests=int(done.group(1)),
        timeouts=int(socket_errors.group(4)) if socket_errors else 0,
    )


def drive(
    wrk: str,
    url: str,
    body: Path,
    clients: int,
    seconds: float,
    warmup: float = 2.0,
    lua: str = WRK_SCRIPT,
    timeout_s: float = 2.0,
    path: str = "/embed",
) -> LoadResult:
    """`clients` connections posting `body` to `path` (or where `lua` says) back to back for `seconds`
    (after a warm-up run); a request unanswered after `timeout_s` counts as an error (wrk's timeout)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua)
        env = {**os.environ, "BRIDLE_BENCH_BODY": str(body)}

        def run(duration: float) -> str:
            cmd = [
                wrk,
                "-t1",
                f"-c{clients}",
                f"-d{duration:g}s",
                f"--timeout={timeout_s:g}s",
                "--latency",
                "-s",
                str(script),
                f"{url}{path}",
            ]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
            return done.stdout

        if warmup > 0:
            run(warmup)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = parse_wrk(run(seconds))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return dataclasses.replace(result, client_cores=used / seconds)


@dataclass
class OverloadResult:
    """Closed-loop clients far past capacity: how many answers came in time, and how fast the served were."""

    clients: int
    answers: int  # answered at all (any status)
    in_time: float  # share of the requests answered (2xx or 503) within `limit_s`
    served_rate: float  # 2xx per second
    refused_share: float  # 503 among the answers
    served_p99_ms: float
    limit_s: float
    refused_p99_ms: float = float("nan")  # latency of the 503 answers

    def line(self, label: str) -> str:
        return (
            f"{label:<58} {100 * self.in_time:5.1f} % answered within {self.limit_s:g} s, "
            f"{self.served_rate:6.1f} req/s served (p99 {self.served_p99_ms:7.1f} ms), "
            f"{100 * self.refused_share:5.1f} % refused"
        )


async def _client(host: str, port: int, request: bytes, stop_at: float, out: list) -> None:
    """One keep-alive connection posting `request` back to back; appends (status, seconds) or
    (0, seconds) for a request that got no answer (the connection broke or the run ended first)."""
    import asyncio

    reader = writer = None
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), stop_at + 30 - time.monotonic())
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            out.append((int(head[9:12]), time.perf_counter() - start))
            if re.search(rb"(?i)connection: *close", head):
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            out.append((0, time.perf_counter() - start))
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def embed_request(url: str, body: bytes) -> tuple[str, str, bytes]:
    """The host and port of `url`, and the raw HTTP/1.1 request posting the wav `body` to /embed."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /embed HTTP/1.1\r\nHost: {host}\r\nContent-Type: audio/wav\r\nContent-Length: {len(body)}\r\n"
    )
    return host, port, head.encode() + b"\r\n" + body


def overload(url: str, body: bytes, clients: int, seconds: float, limit_s: float = 2.0) -> OverloadResult:
    """`clients` closed-loop clients posting `body` to /embed for `seconds` (raw asyncio sockets: a
    Python HTTP library at 400 connections would take the cores the service needs)."""
    import asyncio

    host, port, request = embed_request(url, body)
    out: list[tuple[int, float]] = []

    async def run() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_client(host, int(port), request, stop_at, out) for _ in range(clients)))

    asyncio.run(run())
    statuses = np.array([s for s, _ in out])
    latency = np.array([t for _, t in out])
    answered = (statuses == 200) | (statuses == 503)
    served = latency[statuses == 200] * 1000
    refused = latency[statuses == 503] * 1000
    return OverloadResult(
        clients=clients,
        answers=int((statuses != 0).sum()),
        in_time=float((answered & (latency <= limit_s)).mean()),
        served_rate=len(served) / seconds,
        refused_share=float((statuses == 503).sum() / max(1, (statuses != 0).sum())),
        served_p99_ms=float(np.percentile(served, 99)) if len(served) else float("nan"),
        limit_s=limit_s,
        refused_p99_ms=float(np.percentile(refused, 99)) if len(refused) else float("nan"),
    )


@dataclass
class ProbeResult:
    """What a few sequential probe clients saw while others loaded the service."""

    answers: int
    refused: int
    refused_p50_ms: float
    refused_p99_ms: float


def probe(url: str, body: bytes, seconds: float, clients: int = 4, pause_s: float = 0.005) -> ProbeResult:
    """`clients` threads, each one keep-alive socket posting `body` to /embed, one request at a time with
    `pause_s` between: the latency a client sees (refusals above all) while wrk floods the service. Few
    and paced, so the probe's own work does not decide what it measures."""
    host, port, request = embed_request(url, body)
    out: list[tuple[int, float]] = []
    stop_at = time.monotonic() + seconds

    def one() -> None:
        sock = answers = None
        while time.monotonic() < stop_at:
            if sock is None:
                sock = socket.create_connection((host, int(port)))
                answers = sock.makefile("rb")
            start = time.perf_counter()
            sock.sendall(request)
            status = int(answers.readline()[9:12])
            length, close = 0, False
            while (line := answers.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                length = int(value) if name.lower() == b"content-length" else length
                close = close or (name.lower() == b"connection" and b"close" in value.lower())
            answers.read(length)
            out.append((status, time.perf_counter() - start))
            if close:
                sock.close()
                sock = None
            time.sleep(pause_s)
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = np.array([t for s, t in out if s == 503]) * 1000
    return ProbeResult(
        answers=len(out),
        refused=len(refused),
        refused_p50_ms=float(np.percentile(refused, 50)) if len(refused) else float("nan"),
        refused_p99_ms=float(np.percentile(refused, 99)) if len(refused) else float("nan"),
    )


def ort_throughput(model_dir: Path, batch: int, runs: int, threads: CpuThreads, seconds: float) -> float:
    """Windows per second of the encoder in-process at `batch`, `runs` runs at once (one Python thread
    each, one session shared, as the service does)."""
    model = load_model(model_dir, ProviderChooser(), threads)
    signal = np.random.default_rng(0).uniform(-0.3, 0.3, model.dummy_batch(batch).shape).astype(np.float32)
    model.run("encoder", signal)  # warm-up
    counts = [0] * runs
    stop_at = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop_at:
            model.run("encoder", signal)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(runs)]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) * batch / (time.monotonic() - start)


DEFAULTS = Settings.model_construct()  # the fields' defaults, not the environment's


def main(
    model_dir: Annotated[
        Path | None, typer.Option(help="an audio model directory (default: models/audio-digits)")
    ] = None,
    seconds: Annotated[float, typer.Option(help="measured seconds per load phase")] = 10.0,
    clients: Annotated[int, typer.Option(help="concurrent clients for the saturation phase")] = 64,
    batch: Annotated[int, typer.Option(help="max_batch_size when batching")] = DEFAULTS.max_batch_size,
    runs: Annotated[int, typer.Option(help="concurrent runs per graph")] = DEFAULTS.concurrent_runs,
    threads: Annotated[
        int, typer.Option(help="ORT threads per run (0: cores / runs)")
    ] = DEFAULTS.intra_op_threads,
    overload_clients: Annotated[int, typer.Option(help="clients for the overload phase")] = 400,
) -> None:
    """In-process ONNX Runtime against the service: saturation, dynamic batching, overload."""
    defaults = DEFAULTS
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench.service_load needs wrk: `make bench-service` installs it (apt-get install wrk)")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_dir or (BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(Path(tmp)))
        manifest = read_manifest(model_dir)
        if manifest.modality != "audio":
            sys.exit(f"{model_dir} is a {manifest.modality} model; this bench drives an audio model")
        body = Path(tmp) / "window.wav"
        body.write_bytes(wav_bytes(int(manifest.input.shape[1]), int(manifest.input.sample_rate)))
        served = Settings(concurrent_runs=runs, intra_op_threads=threads).cpu_threads
        print(
            f"model {manifest.name} ({model_dir}), one {manifest.input.window_seconds:.3f} s window per "
            f"request; service: batch <= {batch}, {runs} concurrent run(s), "
            f"{served.intra_op} ORT thread(s) per run, {os.cpu_count()} cores"
        )

        candidates = [
            (batch, r, CpuThreads(intra_op=t, spin=spin, arena=served.arena))  # the service's arena
            for r in sorted({1, runs})
            for t in sorted({0, 1, served.intra_op})
            for spin in (False, True)
        ]
        ort = {c: ort_throughput(model_dir, *c, seconds / 2) for c in candidates}
        ort[(1, runs, served)] = ort_throughput(model_dir, 1, runs, served, seconds / 2)
        env = {"BRIDLE_CONCURRENT_RUNS": str(runs), "BRIDLE_INTRA_OP_THREADS": str(threads)}
        with serve(model_dir, {**env, "BRIDLE_MAX_BATCH_SIZE": str(batch)}) as url:
            saturated = drive(wrk, url, body, clients, seconds)
            batched16 = drive(wrk, url, body, 16, seconds)
        with serve(model_dir, {**env, "BRIDLE_MAX_BATCH_SIZE": "1"}) as url:
            single16 = drive(wrk, url, body, 16, seconds)
        # overload: the in-flight bound as configured, and with no bound (every request admitted)
        wav = body.read_bytes()
        with serve(model_dir, {**env, "BRIDLE_MAX_BATCH_SIZE": str(batch)}) as url:
            bounded = overload(url, wav, overload_clients, seconds)
        unbounded_env = {"BRIDLE_MAX_CONCURRENT_REQUESTS": "1000000", "BRIDLE_QUEUE_SIZE": "1000000"}
        with serve(model_dir, {**env, "BRIDLE_MAX_BATCH_SIZE": str(batch), **unbounded_env}) as url:
            unbounded = overload(url, wav, overload_clients, seconds)

    for (b, r, t), rate in ort.items():
        label = (
            f"in-process ORT, batch {b}, {r} run(s) x {t.intra_op or 'default'} thread(s), "
            f"{'spinning' if t.spin else 'no spin'}"
        )
        print(f"{label:<58} {rate:8.1f} windows/s")
    print(saturated.line(f"service, {clients} clients, batch <= {batch}"))
    print(batched16.line(f"service, 16 clients, batch <= {batch}"))
    print(single16.line("service, 16 clients, batch 1"))
    n = overload_clients
    print(bounded.line(f"service, {n} clients, {defaults.max_concurrent_requests} in flight at most"))
    print(unbounded.line(f"service, {n} clients, no in-flight bound"))
    best = max(rate for (b, _, _), rate in ort.items() if b == batch)
    ceiling = ort[(batch, runs, served)] / ort[(1, runs, served)]
    print(f"service at saturation / best in-process ORT:  {saturated.throughput / best:.2f}  (goal >= 0.85)")
    print(
        f"overload, {n} clients: {100 * bounded.in_time:.1f} % answered within 2 s (goal >= 99 %; "
        f"{100 * unbounded.in_time:.1f} % with no bound), served p99 {bounded.served_p99_ms / 1000:.2f} s "
        f"(goal < 2 s; {unbounded.served_p99_ms / 1000:.2f} s with no bound)"
    )
    print(
        f"dynamic batching / none at 16 clients:       {batched16.throughput / single16.throughput:.2f}  "
        f"(goal >= 1.5; in-process ORT batch {batch} / batch 1 here: {ceiling:.2f})"
    )


if __name__ == "__main__":
    typer.run(main)
