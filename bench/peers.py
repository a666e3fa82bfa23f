"""`bridle-serve` against a hand-written FastAPI + ONNX Runtime server on the same model (issue 28's peer
comparison): `python -m bench.peers [--model-dir models/audio-digits] [--seconds 15]`.

The peer is what one writes in an afternoon: a FastAPI app with one `onnxruntime.InferenceSession` of the
model's `encoder.onnx` (ORT's default options), a plain `def` route (FastAPI runs it in its thread pool)
that decodes the posted wav with the project's own decoding, pads or cuts it to one window, runs the
encoder on a batch of one and answers the pooled embedding as JSON; uvicorn, one process. Both servers
get the same one-window wav from wrk (`bench.service_load.drive`, 2 s time-out) at 16 and at 64 clients,
alternated A B A B in one run; the ratio is bridle-serve's served req/s over the peer's (goal >= 1.1 at
both). The 1-minute load average is printed beside each figure (the machine may be shared).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import onnxruntime as ort
import typer
import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from bench.serve import REPO, free_port, running_server
from bench.service_load import drive, serve, wav_bytes
from bench.timing import load_average
from bridle_model.decoding import decode_audio
from bridle_model.manifest import read_manifest

BUNDLED_AUDIO = REPO / "models" / "audio-digits"
WAV = {"Content-Type": "audio/wav"}


def peer_app(model_dir: Path) -> FastAPI:
    """The hand-written server: one session, decode, one window, run, JSON."""
    manifest = read_manifest(model_dir)
    samples, rate = int(manifest.input.shape[1]), int(manifest.input.sample_rate)
    session = ort.InferenceSession(str(model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    app = FastAPI()

    def embedding(data: bytes) -> list[float]:
        signal = decode_audio(data, rate)[:samples]
        window = np.zeros((1, samples), np.float32)  # (1, samples): one window, zero-padded
        window[0, : signal.shape[0]] = signal
        return session.run(["embedding"], {"signal": window})[0][0].tolist()

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, list[float]]:
        return {"embedding": await run_in_threadpool(embedding, await request.body())}

    return app


@contextmanager
def running_peer(model_dir: Path, ready_timeout_s: float = 60) -> Iterator[str]:
    """The peer in a uvicorn process of its own on a free port; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.peers", "--peer", str(model_dir), "--port", str(port)]
    with running_server(cmd, port, None, "/docs", ready_timeout_s, "the peer") as (url, _):
        yield url


def main(
    model_dir: Annotated[Path, typer.Option(help="an audio model directory")] = BUNDLED_AUDIO,
    seconds: Annotated[float, typer.Option(help="measured seconds per phase")] = 15.0,
    clients: Annotated[str, typer.Option(help="comma-separated client counts")] = "16,64",
    peer: Annotated[Path | None, typer.Option(hidden=True)] = None,
    port: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """bridle-serve's served req/s over a hand-written FastAPI + ONNX Runtime server's, same model."""
    if peer is not None:  # the peer process itself
        uvicorn.run(peer_app(peer), host="127.0.0.1", port=port, log_level="warning")
        return
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("error: bench.peers needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(model_dir)
        body = Path(tmp) / "window.wav"
        body.write_bytes(wav_bytes(int(manifest.input.shape[1]), int(manifest.input.sample_rate)))
        print(f"{model_dir.name}: one-window wavs to /embed, wrk (2 s time-out), {seconds:g} s per phase")
        with serve(model_dir, {}) as ours, running_peer(model_dir) as theirs:  # the same answer first
            ours_e = httpx.post(f"{ours}/embed", content=body.read_bytes(), headers=WAV).json()
            theirs_e = httpx.post(f"{theirs}/embed", content=body.read_bytes(), headers=WAV).json()
        diff = np.abs(np.subtract(ours_e["results"][0]["embedding"], theirs_e["embedding"])).max()
        print(f"  the two servers' embeddings of the wav differ by at most {diff:.1e}")
        for n in (int(c) for c in clients.split(",")):
            rates: dict[str, list[float]] = {"bridle-serve": [], "peer": []}
            for _ in range(2):
                for name in rates:
                    server = serve(model_dir, {}) if name == "bridle-serve" else running_peer(model_dir)
                    with server as url:
                        result = drive(wrk, url, body, n, seconds)
                    rates[name].append(result.throughput)
                    print(result.line(f"  {n} clients, {name}") + f"  ({load_average()})", flush=True)
            ratio = sum(rates["bridle-serve"]) / sum(rates["peer"])
            print(f"  {n} clients: bridle-serve / hand-written FastAPI + ORT: {ratio:.2f} (goal >= 1.1)")


if __name__ == "__main__":
    typer.run(main)
