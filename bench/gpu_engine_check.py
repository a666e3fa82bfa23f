"""Issue 28's GPU checks in one short run, for the first session with a GPU:
`python -m bench.gpu_engine_check [--seconds 15] [--out gpu-engine-check.json]`.

Needs onnxruntime-gpu, a GPU where CUDA starts (else it stops at once with ONNX Runtime's reason),
`nvidia-smi` and Debian's wrk. In order:

1. the micro audio model (models/audio-digits), wrk at `--clients` posting one-window wavs to /embed, with
   `BRIDLE_FRONTENDS` at each of `--frontends` (default 0, half the cores, the cores less one): served
   req/s and p99 (goal >= 15,000 req/s with front ends on the cores), the GPU's utilisation (nvidia-smi
   every 500 ms) and the processes holding GPU memory while loaded (goal: one, the engine);
2. the real-size model (bench/base_model.py, built on demand): in-process ONNX Runtime windows/s on the
   GPU at `--real-batch`, then the service's windows/s at saturation (`--real-clients` closed-loop clients,
   default front ends) and the ratio (goal >= 0.85), with the GPU's utilisation meanwhile (goal >= 80 %)
   and the processes holding GPU memory (goal: one copy of the weights, in the engine).

Each figure is printed as it comes and all are written to `--out` (JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from bench.base_model import base_audio_dir
from bench.engine_load import window_wav
from bench.gpu_check import watching_gpu, why_no_cuda
from bench.serve import closed_loop_rate
from bench.service_load import BUNDLED_AUDIO, drive, ort_throughput, serve
from bridle.runtime.sessions import CpuThreads
from bridle.service.settings import usable_cores


def micro(wrk: str, folder: Path, frontends: list[int], clients: int, seconds: float) -> list[dict]:
    body = window_wav(BUNDLED_AUDIO, folder)
    rows = []
    for n in frontends:
        with (
            serve(BUNDLED_AUDIO, {"BRIDLE_FRONTENDS": str(n)}, ready_timeout_s=600) as url,
            watching_gpu() as gpu,
        ):
            result = drive(wrk, url, body, clients, seconds)
        row = {"frontends": n, "req_s": result.throughput, "p99_ms": result.p99_ms, **gpu.summary()}
        print(f"  micro model, FRONTENDS={n}, {clients} clients: {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def real_size(folder: Path, batch: int, clients: int, seconds: float) -> dict:
    model = base_audio_dir()
    body = window_wav(model, folder).read_bytes()
    in_process = ort_throughput(model, batch, 1, CpuThreads(intra_op=usable_cores()), seconds)
    env = {"BRIDLE_MAX_BATCH_SIZE": str(batch), "BRIDLE_REQUEST_TIMEOUT_S": "600"}
    with serve(model, env, ready_timeout_s=900) as url, watching_gpu() as gpu:
        served = closed_loop_rate(url, "/embed", body, "audio/wav", clients, seconds)
    row = {"in_process_windows_s": in_process, "service_windows_s": served, "ratio": served / in_process}
    row |= gpu.summary()
    print(f"  real-size model, batch {batch}, {clients} clients: {json.dumps(row)}", flush=True)
    return row


def main(
    seconds: Annotated[float, typer.Option(help="measured seconds per phase")] = 15.0,
    clients: Annotated[int, typer.Option(help="wrk clients on the micro model")] = 256,
    frontends: Annotated[
        str, typer.Option(help="comma-separated BRIDLE_FRONTENDS ('': 0, half, all-1)")
    ] = "",
    real_batch: Annotated[int, typer.Option(help="max_batch_size for the real-size model")] = 64,
    real_clients: Annotated[int, typer.Option(help="closed-loop clients on the real-size model")] = 256,
    out: Annotated[Path, typer.Option(help="the figures, as JSON")] = Path("gpu-engine-check.json"),
) -> None:
    """Front ends over one engine on a GPU: req/s, GPU utilisation and one copy of the weights."""
    reason = why_no_cuda(BUNDLED_AUDIO)
    if reason is not None:
        sys.exit(f"CUDA does not start here, nothing to check: {reason}")
    wrk, smi = shutil.which("wrk"), shutil.which("nvidia-smi")
    if wrk is None or smi is None:
        sys.exit("bench.gpu_engine_check needs wrk (apt-get install wrk) and nvidia-smi")
    cores = usable_cores()
    counts = (
        [int(n) for n in frontends.split(",")] if frontends else [0, max(1, cores // 2), max(1, cores - 1)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        found = {
            "micro": micro(wrk, Path(tmp), counts, clients, seconds),
            "real_size": real_size(Path(tmp), real_batch, real_clients, seconds),
        }
    out.write_text(json.dumps(found, indent=2))
    print(f"written to {out} (cwd {os.getcwd()})")


if __name__ == "__main__":
    typer.run(main)
