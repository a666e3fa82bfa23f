"""The GPU path checked in one go, for the first session with a GPU: `python -m bench.gpu_check`.

    python -m bench.gpu_check [--models models] [--out gpu-check.json] [--no-service] [--seconds 10]
                              [--tensorrt]

Needs onnxruntime-gpu and a GPU where CUDA really starts (else it stops at once with ONNX Runtime's
reason). In the order issue #20 asks for, on every model directory under `--models`:

1. node placement (ONNX Runtime's profile: which provider ran each node) and CUDA-vs-CPU parity at
   batch 1, 8 and 16 with TF32 off and on: max abs diff of every float output (goal <= 1e-4 with TF32
   off, as `bridle-export verify` asks of ORT vs PyTorch) and the share of identical codes, per level;
   the CUDA codes at each batch size also against CUDA at batch 1 (a row's codes must not depend on its
   batch);
2. session start time, and first-call vs steady time per batch size (1 .. 64), cuDNN HEURISTIC against
   EXHAUSTIVE search (a fresh session each, so every shape is new);
3. unless `--no-service`: the service's time to ready on the GPU (warm-up of every batch size included),
   then `python -m bench.service_load` against a GPU service (needs Debian's wrk) with `nvidia-smi`
   sampling GPU utilisation alongside;
4. with `--tensorrt` (needs `bridle[tensorrt]`): the service's time to ready with TensorRT on a cold
   engine cache, then on the cache that start left, and the providers each model got.

It prints each figure as it goes and writes them all to `--out` (JSON). Steps 1 and 2 import nothing of
the service's web stack (only onnxruntime, numpy, httpx, typer); `bench/gpu_carry.sh` brings
onnxruntime-gpu to a GPU machine that cannot download it (docs/configuration.md, "GPU").
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from bridle.model.manifest import read_manifest
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import LoadedModel, find_model_dirs, load_model
from bridle.runtime.providers import GpuOptions
from bridle.runtime.sessions import CPU, CUDA, CpuThreads, ProviderChooser, session_options

REPO = Path(__file__).resolve().parent.parent
EMBEDDING_TOLERANCE = 1e-4  # as bridle/export/verify.py: max abs diff of every float output
CODE_AGREEMENT = 0.999  # as bridle/export/verify.py: share of identical code positions
PARITY_BATCHES = (1, 8, 16)
TIMED_BATCHES = (1, 2, 4, 8, 16, 32, 64)
HEAVY_OPS = {"MatMul", "Gemm", "Conv", "Softmax", "LayerNormalization", "Einsum"}
SERVICE_ENV = {"BRIDLE_REQUIRE_GPU": "true"}  # a service that would fall back to the CPU stops instead


@dataclass
class GpuWatch:
    """nvidia-smi's utilisation samples and the pids seen holding GPU memory, while a load runs."""

    utilisation: list[int] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        used = self.utilisation or [0]
        return {
            "util_median_pct": statistics.median(used),
            "util_max_pct": max(used),
            "gpu_pids": sorted(self.pids),
        }


@contextmanager
def watching_gpu() -> Iterator[GpuWatch]:
    """Sample the GPU every 500 ms (utilisation, and the compute processes' pids) until the block ends;
    bench.gpu_check's service step and bench.gpu_engine_check both watch with it."""
    watch, stop = GpuWatch(), threading.Event()
    if shutil.which("nvidia-smi") is None:  # nothing to sample: the figures say so (empty)
        yield watch
        return

    def sample() -> None:
        while not stop.wait(0.5):
            util = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            apps = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                capture_output=True,
                text=True,
            ).stdout.split()
            watch.utilisation += [int(u) for u in util[:1] if u.isdigit()]
            watch.pids |= {int(p) for p in apps if p.isdigit()}

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield watch
    finally:
        stop.set()
        sampler.join()


# ---- pieces the GPU tests share (tests/service/test_gpu.py) -----------------------------------------


def cuda_chooser(**gpu: Any) -> ProviderChooser:
    """CUDA then the CPU, asked for explicitly: a session without CUDA is an error, not a CPU run."""
    return ProviderChooser([CUDA, CPU], gpu=GpuOptions(**gpu))


def why_no_cuda(model_dir: Path) -> str | None:
    """None when a real session here gets the CUDA provider; else ONNX Runtime's reason."""
    try:
        load_model(model_dir, cuda_chooser())
    except ModelLoadError as e:
        return str(e)
    return None


def random_batch(model: LoadedModel, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of the model's input with values in the range real media gives (audio in [-0.5, 0.5])."""
    rng = np.random.default_rng(seed)
    shape = model.dummy_batch(batch).shape
    if model.manifest.input.dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)


def outputs(model: LoadedModel, signal: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of both graphs for `signal`."""
    return model.run("encoder", signal) | model.run("tokenizer", signal)


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max abs diff of every float output; share of identical codes, in all and per level. As in
    `bridle-export verify`, the quantized vectors are compared where every level's code agrees: a flipped
    code swaps a whole codeword, which is no measure of arithmetic precision (the agreement counts it)."""
    figures: dict[str, Any] = {}
    same_rows = None
    if "codes" in reference:
        same_rows = (reference["codes"] == other["codes"]).all(axis=-1)  # (B, N)
    for name, ref in reference.items():
        if name == "quantized" and same_rows is not None:
            diff = np.abs(ref[same_rows] - other[name][same_rows])
            figures[f"{name} max abs diff"] = float(diff.max()) if diff.size else float("inf")
        elif name == "codes":
            same = ref == other[name]  # (B, N, L)
            figures["codes agreement"] = float(same.mean())
            figures["codes agreement per level"] = [
                float(same[..., lvl].mean()) for lvl in range(ref.shape[-1])
            ]
        else:
            figures[f"{name} max abs diff"] = float(np.abs(ref - other[name]).max())
    return figures


def placement(model_dir: Path, chooser: ProviderChooser, graph: str = "encoder") -> dict[str, Counter[str]]:
    """Which provider ran each node of `graph` in one run: provider -> op type -> count (from ONNX
    Runtime's profile)."""
    manifest = read_manifest(model_dir)
    spec = manifest.files[graph]
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(CpuThreads(intra_op=1))
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = chooser.session(model_dir / spec.path, options, manifest.input, spec.sha256[:16])
        model = LoadedModel(model_dir, manifest, {graph: session})
        model.run(graph, model.dummy_batch(2))
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, Counter[str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and "provider" in args:
            nodes.setdefault(args["provider"], Counter())[args["op_name"]] += 1
    return nodes


def first_and_steady(model: LoadedModel, batches: tuple[int, ...], repeats: int = 10) -> dict[int, dict]:
    """Per batch size, on a fresh session: the first run's seconds and the median of `repeats` more."""
    times = {}
    for batch in batches:
        signal = random_batch(model, batch)
        started = time.perf_counter()
        model.run("encoder", signal)
        first = time.perf_counter() - started
        steady = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.run("encoder", signal)
            steady.append(time.perf_counter() - started)
        times[batch] = {"first_s": first, "steady_s": statistics.median(steady)}
    return times


# ---- the steps --------------------------------------------------------------------------------------


def check_parity(model_dir: Path) -> dict[str, Any]:
    cpu = load_model(model_dir, ProviderChooser([CPU]))
    found: dict[str, Any] = {
        "placement": {p: dict(c) for p, c in placement(model_dir, cuda_chooser()).items()}
    }
    for tf32 in (False, True):
        gpu = load_model(model_dir, cuda_chooser(use_tf32=tf32))
        alone = outputs(gpu, random_batch(gpu, max(PARITY_BATCHES)))
        for batch in PARITY_BATCHES:
            signal = random_batch(cpu, max(PARITY_BATCHES))[:batch]
            on_gpu = outputs(gpu, signal)
            figures = compare(outputs(cpu, signal), on_gpu)
            one_by_one = np.concatenate(
                [gpu.run("tokenizer", signal[i : i + 1])["codes"] for i in range(batch)]
            )
            figures["codes vs CUDA batch 1"] = float((one_by_one == on_gpu["codes"]).mean())
            figures["codes vs CUDA batch 16"] = float((alone["codes"][:batch] == on_gpu["codes"]).mean())
            found[f"tf32={'on' if tf32 else 'off'} batch {batch}"] = figures
            print(f"  TF32 {'on ' if tf32 else 'off'} batch {batch:2d}: {figures}")
    return found


def check_timing(model_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for search in ("HEURISTIC", "EXHAUSTIVE"):
        started = time.perf_counter()
        model = load_model(model_dir, cuda_chooser(cudnn_conv_algo_search=search))
        start_s = time.perf_counter() - started
        times = first_and_steady(model, TIMED_BATCHES)
        found[search] = {"session_start_s": start_s, "per_batch": times}
        print(f"  {search}: sessions made in {start_s:.2f} s")
        for batch, t in times.items():
            first, steady = t["first_s"] * 1e3, t["steady_s"] * 1e3
            print(f"    batch {batch:3d}: first {first:8.2f} ms, steady {steady:7.2f} ms")
    return found


def check_tensorrt(models: Path) -> dict[str, Any]:
    """The service's time to ready with TensorRT: a cold cache (engines built), then the same cache."""
    from bench.serve import running_service

    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**SERVICE_ENV, "BRIDLE_USE_TENSORRT": "true", "BRIDLE_TRT_CACHE_DIR": cache}
        for start in ("cold cache", "warm cache"):
            started = time.perf_counter()
            with running_service([models], env) as service:
                found[f"time_to_ready_s ({start})"] = time.perf_counter() - started
                providers = {
                    m["name"]: m["providers"] for m in httpx.get(f"{service.url}/models").json()["models"]
                }
            found[f"providers ({start})"] = providers
            print(f"  TensorRT, {start}: ready in {found[f'time_to_ready_s ({start})']:.1f} s, {providers}")
        found["cache files"] = sorted(
            str(p.relative_to(cache)) for p in Path(cache).rglob("*") if p.is_file()
        )
    return found


def check_service(models: Path, seconds: float) -> dict[str, Any]:
    from bench.serve import running_service

    found: dict[str, Any] = {}
    started = time.perf_counter()
    with running_service([models], SERVICE_ENV):
        found["time_to_ready_s"] = time.perf_counter() - started
    print(f"  service ready on the GPU in {found['time_to_ready_s']:.1f} s (every batch size warmed up)")
    if shutil.which("wrk") is None:
        found["bench_service"] = "skipped: wrk is not installed (apt-get install wrk)"
        print(f"  {found['bench_service']}")
        return found
    with watching_gpu() as gpu:
        bench = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.service_load",
                "--seconds",
                str(seconds),
                "--runs",
                "1",
                "--batch",
                "64",
            ],
            cwd=REPO,
            env={**os.environ, **SERVICE_ENV},
            capture_output=True,
            text=True,
        )
    utilisation = gpu.utilisation
    found["bench_service"] = bench.stdout + bench.stderr[-2000:]
    if utilisation:
        found["gpu_utilisation_pct"] = {"median": statistics.median(utilisation), "max": max(utilisation)}
    print(bench.stdout)
    print(f"  GPU utilisation while loaded: {found.get('gpu_utilisation_pct', 'no nvidia-smi')}")
    return found


def main(
    models: Annotated[Path, typer.Option(help="a model directory or a folder of them")] = REPO / "models",
    out: Annotated[Path, typer.Option(help="where the figures go (JSON)")] = Path("gpu-check.json"),
    service: Annotated[bool, typer.Option(help="also the service's start and bench.service_load")] = True,
    seconds: Annotated[float, typer.Option(help="seconds per bench.service_load phase")] = 10.0,
    tensorrt: Annotated[
        bool, typer.Option(help="also the service's start with TensorRT, cold and cached")
    ] = False,
) -> None:
    directories = find_model_dirs([models])
    reason = why_no_cuda(directories[0])
    if reason is not None:
        sys.exit(f"CUDA does not start here, nothing to check: {reason}")
    report: dict[str, Any] = {"models": {}}
    for directory in directories:
        print(f"{directory.name}: placement and parity")
        parity = check_parity(directory)
        print(f"{directory.name}: start and first-call times")
        report["models"][directory.name] = {"parity": parity, "timing": check_timing(directory)}
        out.write_text(json.dumps(report, indent=1))
    if service:
        print("service")
        report["service"] = check_service(models, seconds)
    if tensorrt:
        print("TensorRT")
        report["tensorrt"] = check_tensorrt(models)
    out.write_text(json.dumps(report, indent=1))
    print(f"figures written to {out}")


if __name__ == "__main__":
    typer.run(main)
