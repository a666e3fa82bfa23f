"""The engine under load: `python -m bench.engine_load [--seconds 15] [--real-size-seconds 90]`.

Ratios measured in one run, on this machine (`make bench-engine`; wrk from Debian):

1. served req/s at 400 clients / at 16 clients (goal >= 0.8, client time-outs <= 1 %): wrk posting a
   one-window wav to `POST /embed` of the small audio model (`models/audio-digits`, else a fresh tiny
   export), with wrk's 2 s time-out; the service's in-flight bound as configured;
2. refusal latency, p99 (goal <= 20 ms): wrk's 400 clients against the service with an in-flight bound
   of `--refusal-bound` (8), so that most answers are refusals, while 4 paced probe clients time their
   own requests (nearly all refused): the 503s' latency as a client sees it;
3. real-size model (bench/base_model.py, built on demand): service windows/s at saturation / in-process
   ONNX Runtime windows/s (goal >= 0.95), both at batch `--real-batch` with the service's
   concurrent runs, one 10.24 s window per request (closed-loop Python clients counting whole
   requests: a window takes seconds, so a fixed wrk window would cut many in two);
4. the front ends' niceness (`--nice N`, 0 skips it; `--nice-only` runs only this): served req/s at 400
   clients / at 16 with the front ends at BRIDLE_FRONTEND_NICE=0 (equal CPU shares with the engine) and
   at N (the default 10), alternated A B A B;
5. the process layouts (`--frontends N`, 0 skips it; `--layouts-only` runs only this): one process whose
   batcher threads are the engine (BRIDLE_FRONTENDS=0) against N front-end processes over an engine
   process (BRIDLE_FRONTENDS=N), alternated A B A B in one run, on the small model (wrk, `--clients`
   clients, `--seconds`) and on the real-size model (closed-loop clients, `--real-size-seconds`): each
   figure with the 1-minute load average beside it (the machine is shared), and the ratio N / 0.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from bench.base_model import base_audio_dir
from bench.serve import closed_loop_rate
from bench.service_load import (
    BUNDLED_AUDIO,
    drive,
    export_tiny_audio,
    ort_throughput,
    probe,
    serve,
    wav_bytes,
)
from bench.timing import load_average
from bridle.model.manifest import read_manifest
from bridle.service.settings import Settings


def window_wav(model_dir: Path, folder: Path) -> Path:
    """A wav of exactly one window of the model at `model_dir`, written into `folder`."""
    manifest = read_manifest(model_dir)
    path = folder / f"{manifest.name}.wav"
    path.write_bytes(wav_bytes(int(manifest.input.shape[1]), int(manifest.input.sample_rate)))
    return path


@dataclass(frozen=True)
class Load:
    """The options of one run (the command line's)."""

    seconds: float = 15.0  # measured seconds per small-model phase
    clients: int = 16  # the baseline's clients
    overload_clients: int = 400
    refusal_bound: int = 8  # the in-flight bound of the refusal phase
    real_size_seconds: float = 90.0  # 0: skip the real-size phase
    real_batch: int = 4  # max_batch_size for the real-size model
    real_clients: int = 8
    runs: int = 2  # concurrent runs per graph (the service's default)
    frontends: int = 2  # front-end processes to compare with one process; 0: skip
    layouts_only: bool = False  # only the process layouts' comparison
    nice: int = Settings().frontend_nice  # the front ends' niceness to compare with 0; 0: skip
    nice_only: bool = False  # only the niceness comparison


D = Load()
WARMUP_S = 2.0  # wrk's warm-up run before each measured one


def main(
    seconds: Annotated[float, typer.Option(help="measured seconds per small-model phase")] = D.seconds,
    clients: Annotated[int, typer.Option(help="the baseline's clients")] = D.clients,
    overload_clients: Annotated[int, typer.Option()] = D.overload_clients,
    refusal_bound: Annotated[
        int, typer.Option(help="the in-flight bound of the refusal phase")
    ] = D.refusal_bound,
    real_size_seconds: Annotated[
        float, typer.Option(help="0: skip the real-size phase")
    ] = D.real_size_seconds,
    real_batch: Annotated[int, typer.Option(help="max_batch_size for the real-size model")] = D.real_batch,
    real_clients: Annotated[int, typer.Option()] = D.real_clients,
    runs: Annotated[int, typer.Option(help="concurrent runs per graph (the service's default)")] = D.runs,
    frontends: Annotated[int, typer.Option(help="front-end processes to compare; 0: skip")] = D.frontends,
    layouts_only: Annotated[bool, typer.Option(help="only the process layouts' comparison")] = D.layouts_only,
    nice: Annotated[int, typer.Option(help="front ends' niceness to compare with 0; 0: skip")] = D.nice,
    nice_only: Annotated[bool, typer.Option(help="only the niceness comparison")] = D.nice_only,
) -> None:
    """Served req/s under overload, refusal latency, and a real-size model through the service."""
    args = Load(
        seconds,
        clients,
        overload_clients,
        refusal_bound,
        real_size_seconds,
        real_batch,
        real_clients,
        runs,
        frontends,
        layouts_only,
        nice,
        nice_only,
    )
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench.engine_load needs wrk: `make bench-engine` installs it (apt-get install wrk)")
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {"BRIDLE_CONCURRENT_RUNS": str(args.runs)}
        only = args.layouts_only or args.nice_only
        if args.seconds > 0 and not only:
            lines += small_model(wrk, folder, env, args)
        if args.real_size_seconds > 0 and not only:
            lines += real_size_model(wrk, folder, env, args)
        if args.nice > 0 and args.seconds > 0 and not args.layouts_only:
            lines += niceness(wrk, folder, env, args)
        if args.frontends > 0 and not args.nice_only:
            lines += layouts(wrk, folder, env, args)
    print("\n".join(lines))


def niceness(wrk: str, folder: Path, env: dict[str, str], args: Load) -> list[str]:
    """Served req/s at `--overload-clients` / at `--clients` with the front ends as nice as the engine
    (0) and at `--nice`, alternated twice, on the small model."""
    small = BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(folder)
    body = window_wav(small, folder)
    ratios: dict[int, list[tuple[float, float]]] = {0: [], args.nice: []}
    lines = [
        f"front ends' niceness over the engine's (BRIDLE_FRONTEND_NICE), {small.name}, {args.seconds:g} s"
    ]
    for nice in [0, args.nice, 0, args.nice]:
        with serve(small, {**env, "BRIDLE_FRONTEND_NICE": str(nice)}) as url:
            base = drive(wrk, url, body, args.clients, args.seconds)
            loaded = drive(wrk, url, body, args.overload_clients, args.seconds)
        ratios[nice].append((base.throughput, loaded.throughput))
        lines.append(
            f"    nice {nice:2d}: {args.clients} clients {base.throughput:6.1f} req/s,"
            f" {args.overload_clients} clients {loaded.throughput:6.1f} req/s served"
            f" ({loaded.timeouts} time-outs): "
            f"{loaded.throughput / base.throughput:.2f}  ({load_average()})"
        )
    for nice, runs in ratios.items():
        ratio = sum(b for _, b in runs) / sum(a for a, _ in runs)
        lines.append(
            f"    served req/s at {args.overload_clients} / at {args.clients} clients,"
            f" nice {nice}: {ratio:.2f}"
        )
    return lines


def layouts(wrk: str, folder: Path, env: dict[str, str], args: Load) -> list[str]:
    """The same load on one process (FRONTENDS=0) and on N front ends + an engine process, alternated
    twice; each figure with the load average, and the ratio of the sums."""
    n = args.frontends
    order = [0, n, 0, n]
    lines = [f"process layouts: 0 = one process (engine threads), {n} = {n} front ends + engine process"]
    if args.seconds > 0:
        small = BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(folder)
        body = window_wav(small, folder)
        clients = (args.clients, args.overload_clients)
        rates: dict[tuple[int, int], list[float]] = {(f, c): [] for f in (0, n) for c in clients}
        lines.append(f"  small model {small.name}, wrk, {args.seconds:g} s per phase")
        for frontends in order:
            with serve(small, {**env, "BRIDLE_FRONTENDS": str(frontends)}) as url:
                for c in clients:
                    result = drive(wrk, url, body, c, args.seconds)
                    rates[frontends, c].append(result.throughput)
                    label = f"    FRONTENDS={frontends}, {c} clients"
                    lines.append(result.line(label) + f"  ({load_average()})")
        for c in clients:
            ratio = sum(rates[n, c]) / sum(rates[0, c])
            lines.append(f"    served req/s at {c} clients, {n} front ends / one process: {ratio:.2f}")
    if args.real_size_seconds > 0:
        real = base_audio_dir()
        body = window_wav(real, folder).read_bytes()
        real_env = {**env, "BRIDLE_MAX_BATCH_SIZE": str(args.real_batch), "BRIDLE_REQUEST_TIMEOUT_S": "900"}
        windows: dict[int, list[float]] = {0: [], n: []}
        lines.append(
            f"  real-size model {real.name}, batch <= {args.real_batch}, {args.real_clients} closed-loop"
            f" clients, {args.real_size_seconds:g} s per phase"
        )
        for frontends in order:
            with serve(real, {**real_env, "BRIDLE_FRONTENDS": str(frontends)}, ready_timeout_s=900) as url:
                rate = closed_loop_rate(
                    url, "/embed", body, "audio/wav", args.real_clients, args.real_size_seconds
                )
            windows[frontends].append(rate)
            lines.append(f"    FRONTENDS={frontends}: {rate:.2f} windows/s  ({load_average()})")
        lines.append(f"    windows/s, {n} front ends / one process: {sum(windows[n]) / sum(windows[0]):.2f}")
    return lines


def small_model(wrk: str, folder: Path, env: dict[str, str], args: Load) -> list[str]:
    """Served req/s at `--overload-clients` / at `--clients`, and the refusals' latency."""
    small = BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(folder)
    body = window_wav(small, folder)
    with serve(small, env) as url:
        base = drive(wrk, url, body, args.clients, args.seconds)
        loaded = drive(wrk, url, body, args.overload_clients, args.seconds)
    # refusals on purpose: an in-flight bound far below wrk's clients, so most answers are 503s; a
    # few paced probe clients time what a client sees meanwhile
    bounded = {**env, "BRIDLE_MAX_CONCURRENT_REQUESTS": str(args.refusal_bound)}
    with serve(small, bounded) as url, ThreadPoolExecutor(1) as pool:
        flood = pool.submit(drive, wrk, url, body, args.overload_clients, args.seconds, WARMUP_S)
        time.sleep(WARMUP_S + 0.5)
        probed = probe(url, body.read_bytes(), args.seconds - 1)
        flooded = flood.result()
    n = args.overload_clients
    refused_rate = (loaded.requests - loaded.throughput * args.seconds) / args.seconds
    return [
        f"small model {small.name}, one-window wavs, wrk (2 s time-out), {args.seconds:g} s per phase",
        base.line(f"  {args.clients} clients") + f"  wrk used {base.client_cores:.2f} cores",
        loaded.line(f"  {n} clients")
        + f"  {loaded.timeouts} time-outs of {loaded.requests + loaded.timeouts};"
        f" {refused_rate:.0f} refusals/s; wrk used {loaded.client_cores:.2f} cores",
        f"  served req/s at {n} / at {args.clients} clients: {loaded.throughput / base.throughput:.2f}"
        f"  (goal >= 0.8); time-outs {100 * loaded.timeouts / max(1, loaded.requests):.2f} % (goal <= 1 %)",
        f"  refusal latency: wrk's {n} clients against {args.refusal_bound} in flight at most"
        f" ({flooded.requests / args.seconds:.0f} answers/s, wrk used {flooded.client_cores:.2f} cores);"
        f" {probed.refused} of {probed.answers} probe requests refused: p50 {probed.refused_p50_ms:.1f} ms,"
        f" p99 {probed.refused_p99_ms:.1f} ms (goal <= 20 ms)",
    ]


def real_size_model(wrk: str, folder: Path, env: dict[str, str], args: Load) -> list[str]:
    """The real-size model's windows/s through the service at saturation / in process."""
    real = base_audio_dir()
    body = window_wav(real, folder)
    threads = Settings(concurrent_runs=args.runs).cpu_threads  # the service's: threads per run, arena
    in_process = ort_throughput(real, args.real_batch, args.runs, threads, args.real_size_seconds / 2)
    # a 10 s window takes seconds of CPU: the queue's time-out must outlast a full queue
    real_env = {**env, "BRIDLE_MAX_BATCH_SIZE": str(args.real_batch), "BRIDLE_REQUEST_TIMEOUT_S": "900"}
    with serve(real, real_env, ready_timeout_s=900) as url:
        served = closed_loop_rate(
            url, "/embed", body.read_bytes(), "audio/wav", args.real_clients, args.real_size_seconds
        )
    return [
        f"real-size model {real.name} (10.24 s windows), batch <= {args.real_batch}, "
        f"{args.runs} runs at once, {threads.intra_op} ORT thread(s) each, memory arena"
        f" {'on' if threads.arena else 'off'} (as the service), {args.real_size_seconds:g} s",
        f"  in-process ORT (encoder): {in_process:.2f} windows/s",
        f"  service, {args.real_clients} closed-loop clients: {served:.2f} windows/s",
        f"  service / in-process: {served / in_process:.2f}  (goal >= 0.95)",
    ]


if __name__ == "__main__":
    typer.run(main)
