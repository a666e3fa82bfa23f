"""`/v1/embeddings` against `/embed` on the same files: `python -m bench.openai_ratio [--clients 16]`.

Starts `bridle-serve` on the bundled models (a subprocess, its default front ends) and drives it with
wrk (Debian's `wrk`; `scripts/system-deps.sh wrk`), `--clients` closed-loop connections each posting one
file back to back: to `/embed` as a raw body with its Content-Type, and to `/v1/embeddings` as the JSON
the official `openai` client sends (`{"model", "input": "data:<type>;base64,...", "encoding_format":
"base64"}`). Each request carries one input, so requests per second are inputs per second. The two routes
take turns, `--rounds` times per modality (the order swapped every round), in the same server, so they
share whatever else loads the machine; the ratio is the median of the rounds' ratios (goal >= 0.9).
First it checks that both routes give this server's same vector (cosine >= 0.9999) for each file.
Beside the ratio, the service's CPU time per input (its whole process tree: supervisor, front ends, engine),
which a loaded machine disturbs less than the throughput: /v1/embeddings over /embed, lower is cheaper.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer

from bench.serve import BUNDLED, cpu_seconds, running_service
from bench.service_load import LoadResult, drive
from bridle.data.media_files import CONTENT_TYPES, make_audio, make_image, make_video
from bridle.model.manifest import read_manifest

LUA = """
local f = assert(io.open(os.getenv("BRIDLE_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.path = "{path}"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
"""


def media(modality: str) -> tuple[bytes, str]:
    """One file of a window or less for the bundled model of `modality`: a 1 s wav, a 64 px png, a 1 s
    mp4."""
    fmt = {"audio": "wav", "image": "png", "video": "mp4"}[modality]
    data = {
        "audio": lambda: make_audio("wav", 1.0, sample_rate=8000),
        "image": lambda: make_image("png", (64, 64)),
        "video": lambda: make_video("mp4", 1.0),
    }[modality]()
    return data, CONTENT_TYPES[fmt]


def openai_body(model: str, data: bytes, content_type: str) -> bytes:
    """The body the official client sends for one input (it asks for base64 unless told otherwise)."""
    url = f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
    return json.dumps({"model": model, "input": [url], "encoding_format": "base64"}).encode()


def check_same_vectors(url: str, model: str, data: bytes, content_type: str) -> None:
    """Both routes give the same clip embedding in this server (its front ends and engine), or stop."""
    embed = httpx.post(f"{url}/embed", content=data, headers={"Content-Type": content_type}, timeout=60)
    v1 = httpx.post(f"{url}/v1/embeddings", content=openai_body(model, data, content_type), timeout=60)
    a = np.array(embed.raise_for_status().json()["results"][0]["embedding"], np.float64)
    b = np.frombuffer(base64.b64decode(v1.raise_for_status().json()["data"][0]["embedding"]), "<f4")
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    if cosine < 0.9999:
        raise RuntimeError(f"{model}: /v1/embeddings and /embed differ (cosine {cosine})")


def main(
    clients: Annotated[int, typer.Option(help="closed-loop wrk connections")] = 16,
    seconds: Annotated[float, typer.Option(help="seconds per measurement")] = 5,
    rounds: Annotated[int, typer.Option(help="turns of each route per modality")] = 6,
    modalities: Annotated[
        str, typer.Option(help="comma-separated: audio, image, video")
    ] = "audio,image,video",
) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise typer.BadParameter("wrk is not installed: bash scripts/system-deps.sh wrk")
    models = {read_manifest(d).modality: read_manifest(d).name for d in BUNDLED}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratios: dict[str, float] = {}
    with (
        running_service(BUNDLED, {"BRIDLE_QUEUE_SIZE": "4096"}) as service,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for modality in modalities.split(","):
            data, ctype = media(modality)
            bodies = {
                "/embed": (data, ctype),
                "/v1/embeddings": (openai_body(models[modality], data, ctype), "application/json"),
            }
            check_same_vectors(service.url, models[modality], data, ctype)
            runs: dict[str, list[LoadResult]] = {path: [] for path in bodies}
            cpu: dict[str, list[float]] = {path: [] for path in bodies}  # service CPU seconds per input
            files = {}
            for path, (body, _) in bodies.items():
                files[path] = Path(tmp) / f"{modality}-{path.strip('/').replace('/', '-')}"
                files[path].write_bytes(body)
            for path, (_, content_type) in bodies.items():  # warm-up: each route's first requests
                drive(
                    wrk,
                    service.url,
                    files[path],
                    clients,
                    2,
                    0,
                    LUA.format(path=path, content_type=content_type),
                )
            for r in range(rounds):
                order = list(bodies) if r % 2 == 0 else list(reversed(bodies))
                for path in order:
                    body, content_type = bodies[path]
                    lua = LUA.format(path=path, content_type=content_type)
                    used = cpu_seconds(service.process.pid)
                    result = drive(wrk, service.url, files[path], clients, seconds, 0, lua, timeout_s=10)
                    used = cpu_seconds(service.process.pid) - used
                    if result.errors:
                        raise RuntimeError(f"{path}: {result.errors} errors of {result.requests} requests")
                    runs[path].append(result)
                    cpu[path].append(used / result.requests)
                    print(
                        f"{modality} round {r + 1} {path}: {result.throughput:.1f} inputs/s "
                        f"(p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, body {len(body)} B, "
                        f"service CPU {cpu[path][-1] * 1e3:.2f} ms per input)"
                    )
            each = [
                v.throughput / e.throughput
                for v, e in zip(runs["/v1/embeddings"], runs["/embed"], strict=True)
            ]
            ratios[modality] = statistics.median(each)
            cpu_ratio = statistics.median(cpu["/v1/embeddings"]) / statistics.median(cpu["/embed"])
            print(
                f"{modality}: /v1/embeddings / /embed at {clients} clients = {ratios[modality]:.3f} "
                f"(median of rounds {', '.join(f'{x:.3f}' for x in each)}); service CPU per input "
                f"{cpu_ratio:.3f}x /embed's (medians)"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for modality, ratio in ratios.items():
        print(f"RATIO {modality} {ratio:.3f} (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    typer.run(main)
