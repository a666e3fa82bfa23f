"""Memory and start-up of the engine on the real-size model: `python -m bench.engine_memory [--batch 16]`.

On `bench/base_model.py`'s model (ViT-B encoder and tokenizer, 10.24 s windows; built on demand), each
way of holding the sessions runs in a fresh process, every graph at batch `--batch` on `--runs` threads
at once (the service's `concurrent_runs`), and reports its resident size (VmRSS) after the runs:

- `one-run`: one session per graph, one run at a time: the floor (the issue's "one session per graph at
  the same batch size");
- `shared`: one session per graph, `--runs` runs at once on it (the engine: ORT's `run()` is thread-safe
  and releases the GIL);
- `per-run`: a session per graph per concurrent run (each with its own weights and arena);
- `shared-no-arena`: as `shared`, ONNX Runtime's CPU memory arena off (activations freed after each run).

Then the encoder's windows/s in process (`--throughput-batch`), for `--runs` runs at once on one session
with the arena on and off, and for one run at a time with every core; and `bridle-serve` itself on the
model (`--serve`: warm-up and arena settings): seconds from start to `/ready` and its RSS then. Ratios
are against `one-run`, measured in the same run; RSS after the runs, peak (VmHWM) beside it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.base_model import base_audio_dir
from bench.serve import memory_mb, running_service
from bench.service_load import ort_throughput
from bench.timing import run_worker
from bridle.runtime.sessions import CpuThreads

MODES = ("one-run", "shared", "per-run", "shared-no-arena")


def measure(mode: str, directory: Path, batch: int, runs: int) -> dict[str, float]:
    """In this process: open the sessions the way `mode` says, run every graph, -> seconds and RSS."""
    import onnxruntime as ort

    from bridle.model.manifest import read_manifest
    from bridle.runtime.models import NUMPY_DTYPES
    from bridle.runtime.sessions import CPU, ProviderChooser, session_options

    manifest = read_manifest(directory, check_hashes=False)
    chooser = ProviderChooser([CPU])
    threads = runs if mode != "one-run" else 1
    copies = runs if mode == "per-run" else 1

    def options() -> ort.SessionOptions:
        cores = len(os.sched_getaffinity(0))
        return session_options(CpuThreads(max(1, cores // threads), arena=mode != "shared-no-arena"))

    started = time.perf_counter()
    sessions = {
        graph: [chooser.session(directory / spec.path, options()) for _ in range(copies)]
        for graph, spec in manifest.files.items()
    }
    loaded = time.perf_counter() - started
    shape = [batch, *(int(d) for d in manifest.input.shape[1:])]
    signal = np.zeros(shape, dtype=NUMPY_DTYPES[manifest.input.dtype])  # (B, ...)
    started = time.perf_counter()
    for copies_of_graph in sessions.values():

        def run(i: int, copies_of_graph=copies_of_graph) -> None:
            copies_of_graph[i % len(copies_of_graph)].run(None, {manifest.input.name: signal})

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return {
        "load_s": loaded,
        "run_s": time.perf_counter() - started,
        "rss_mb": memory_mb(),
        "peak_mb": memory_mb("VmHWM"),
    }


def in_subprocess(mode: str, directory: Path, batch: int, runs: int) -> dict[str, float]:
    return run_worker(
        "bench.engine_memory", "--worker", mode, "--model-dir", str(directory), "--batch", str(batch),
        "--runs", str(runs),
    )  # fmt: skip


def serve_ready(directory: Path, batch: int, runs: int, warmup: str, arena: bool) -> tuple[float, float]:
    """`bridle-serve` on the model: seconds from start to /ready, and its RSS then (MB)."""
    env = {
        "BRIDLE_MAX_BATCH_SIZE": str(batch),
        "BRIDLE_CONCURRENT_RUNS": str(runs),
        "BRIDLE_WARMUP": warmup,
        "BRIDLE_PROVIDERS": "CPUExecutionProvider",
        "BRIDLE_CPU_MEM_ARENA": str(arena).lower(),
    }
    started = time.perf_counter()
    with running_service([directory], env, ready_timeout_s=900) as service:
        return time.perf_counter() - started, service.rss_mb()


def main(
    batch: Annotated[int, typer.Option(help="windows per run (the service's max_batch_size)")] = 16,
    runs: Annotated[int, typer.Option(help="runs at once (the service's concurrent_runs)")] = 2,
    modes: Annotated[str, typer.Option(help=f"some of {','.join(MODES)}")] = ",".join(MODES),
    serve: Annotated[
        str,
        typer.Option(help="bridle-serve figures, comma-separated BRIDLE_WARMUP:arena|no-arena ('': none)"),
    ] = "one:arena,one:no-arena,full:arena",
    throughput_seconds: Annotated[float, typer.Option(help="per engine layout (0: skip); in process")] = 40.0,
    throughput_batch: Annotated[int, typer.Option(help="windows per run for the throughput")] = 4,
    model_dir: Annotated[
        Path | None, typer.Option(help="default: bench/base_model.py's, built on demand")
    ] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """RSS, load and run time of each session layout, in-process windows/s, and bridle-serve's ready time."""
    directory = model_dir or base_audio_dir()
    if worker:
        print(json.dumps(measure(worker, directory, batch, runs)))
        return
    print(f"{directory.name}: batch {batch}, {runs} runs at once, CPU provider")
    modes = [m for m in modes.split(",") if m]
    found = {mode: in_subprocess(mode, directory, batch, runs) for mode in modes}
    floor = found.get("one-run", {}).get("rss_mb")
    for mode, f in found.items():
        ratio = f" = {f['rss_mb'] / floor:.2f} x one-run" if floor else ""
        times = f"load {f['load_s']:5.1f} s  runs {f['run_s']:6.1f} s"
        print(f"  {mode:<16} {times}  RSS {f['rss_mb']:6.0f} MB{ratio}  (peak {f['peak_mb']:6.0f} MB)")
    if throughput_seconds > 0:
        cores = len(os.sched_getaffinity(0))
        layouts = [(runs, True), (runs, False), (1, True)]
        for runs, arena in layouts:
            threads = CpuThreads(intra_op=max(1, cores // runs), arena=arena)
            rate = ort_throughput(directory, throughput_batch, runs, threads, throughput_seconds)
            print(
                f"  encoder windows/s in process, batch {throughput_batch}, {runs} run(s) at once x "
                f"{threads.intra_op} thread(s), arena {'on' if arena else 'off'}: {rate:.2f}"
            )
    for served in filter(None, serve.split(",")):
        warmup, arena = served.split(":")
        ready_s, rss = serve_ready(directory, batch, runs, warmup, arena == "arena")
        ratio = f" = {rss / floor:.2f} x one-run" if floor else ""
        label = f"bridle-serve, BRIDLE_WARMUP={warmup}, {arena}"
        print(f"  {label}: ready in {ready_s:.1f} s, RSS {rss:.0f} MB{ratio}")


if __name__ == "__main__":
    typer.run(main)
