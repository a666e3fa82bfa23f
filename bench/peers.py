"""`bridle-serve` against its peers on the same model (issue 28's peer comparison):
`python -m bench.peers [--model-dir models/audio-digits] [--seconds 15]`.

The peers:
- `fastapi`: what one writes in an afternoon: a FastAPI app with one `onnxruntime.InferenceSession` of
  the model's `encoder.onnx` (ORT's default options), a plain `def` route (FastAPI runs it in its thread
  pool) that decodes the posted wav with the project's own decoding, pads or cuts it to one window, runs
  the encoder on a batch of one and answers the pooled embedding as JSON; uvicorn, one process.
- `litserve` (when `litserve` is installed: `pip install -e '.[peers]'`, as `make bench-engine` does):
  the same session and decoding in a `LitAPI` with LitServe's dynamic batching (up to 16 windows, 5 ms),
  one worker, one API server. LitServe parses a JSON or form body, so it gets the same wav base64-encoded
  in JSON (`{"wav": ...}`) at its `/predict`.

Every server gets the same one-window wav from wrk (`bench.service_load.drive`, 2 s time-out) at 16 and
at 64 clients, alternated in one run; the ratio is bridle-serve's served req/s over each peer's (goal >= 1.1
at both, against the best peer). The 1-minute load average is printed beside each figure.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from bench.service_load import WRK_SCRIPT, drive, serve, wav_bytes
from bench.timing import load_average
from bridle.model.decoding import decode_audio
from bridle.model.manifest import read_manifest

BUNDLED_AUDIO = REPO / "models" / "audio-digits"
WAV = {"Content-Type": "audio/wav"}
JSON = {"Content-Type": "application/json"}
CPU = "CPUExecutionProvider"


def peer_app(model_dir: Path) -> FastAPI:
    """The hand-written server: one session, decode, one window, run, JSON."""
    manifest = read_manifest(model_dir)
    samples, rate = int(manifest.input.shape[1]), int(manifest.input.sample_rate)
    session = ort.InferenceSession(str(model_dir / "encoder.onnx"), providers=[CPU])
    app = FastAPI()

    def embedding(data: bytes) -> list[float]:
        window = one_window(data, samples, rate)[None]  # (1, samples)
        return session.run(["embedding"], {"signal": window})[0][0].tolist()

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, list[float]]:
        return {"embedding": await run_in_threadpool(embedding, await request.body())}

    return app


def one_window(data: bytes, samples: int, rate: int) -> np.ndarray:
    """The posted wav, decoded, cut or zero-padded to one window: (samples,)."""
    signal = decode_audio(data, rate)[:samples]
    window = np.zeros(samples, np.float32)
    window[: signal.shape[0]] = signal
    return window


@dataclass(frozen=True)
class Peer:
    name: str
    ready_path: str
    lua: str  # wrk's script: method, headers, body (read from BRIDLE_BENCH_BODY), path

    def body(self, wav: bytes) -> bytes:
        return (
            json.dumps({"wav": base64.b64encode(wav).decode()}).encode() if self.name == "litserve" else wav
        )

    def answer(self, url: str, wav: bytes) -> list[float]:
        if self.name == "litserve":
            return httpx.post(f"{url}/predict", content=self.body(wav), headers=JSON, timeout=30).json()[
                "embedding"
            ]
        return httpx.post(f"{url}/embed", content=wav, headers=WAV, timeout=30).json()["embedding"]


PEERS = {
    "fastapi": Peer("fastapi", "/docs", WRK_SCRIPT),
    "litserve": Peer(
        "litserve", "/health", WRK_SCRIPT.replace("audio/wav", "application/json") + 'wrk.path = "/predict"\n'
    ),
}


@contextmanager
def running_peer(peer: Peer, model_dir: Path, ready_timeout_s: float = 120) -> Iterator[str]:
    """The peer in a process of its own on a free port; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.peers", "--peer", peer.name, "--model-dir", str(model_dir)]
    cmd += ["--port", str(port)]
    with running_server(cmd, port, None, peer.ready_path, ready_timeout_s, f"the {peer.name} peer") as (
        url,
        _,
    ):
        yield url


def installed_peers() -> list[Peer]:
    try:
        import litserve  # noqa: F401
    except ImportError:
        print("  (LitServe is not installed: `pip install -e '.[peers]'` adds it)")
        return [PEERS["fastapi"]]
    return [PEERS["fastapi"], PEERS["litserve"]]


def main(
    model_dir: Annotated[Path, typer.Option(help="an audio model directory")] = BUNDLED_AUDIO,
    seconds: Annotated[float, typer.Option(help="measured seconds per phase")] = 15.0,
    clients: Annotated[str, typer.Option(help="comma-separated client counts")] = "16,64",
    peer: Annotated[str | None, typer.Option(hidden=True)] = None,
    port: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """bridle-serve's served req/s over each peer's (hand-written FastAPI + ORT, LitServe), same model."""
    if peer == "fastapi":  # a peer process itself
        uvicorn.run(peer_app(model_dir), host="127.0.0.1", port=port, log_level="warning")
        return
    if peer == "litserve":
        from bench.litserve_peer import run

        run(model_dir, port)
        return
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("error: bench.peers needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(model_dir)
        wav = wav_bytes(int(manifest.input.shape[1]), int(manifest.input.sample_rate))
        print(f"{model_dir.name}: one-window wavs, wrk (2 s time-out), {seconds:g} s per phase")
        peers = installed_peers()
        bodies = {p.name: Path(tmp) / f"{p.name}.body" for p in peers}
        for p in peers:
            bodies[p.name].write_bytes(p.body(wav))
        ours_body = Path(tmp) / "window.wav"
        ours_body.write_bytes(wav)
        with serve(model_dir, {}) as ours:  # the same answer first
            ours_e = httpx.post(f"{ours}/embed", content=wav, headers=WAV).json()["results"][0]["embedding"]
        for p in peers:
            with running_peer(p, model_dir) as theirs:
                diff = np.abs(np.subtract(ours_e, p.answer(theirs, wav))).max()
            print(f"  bridle-serve's and {p.name}'s embeddings of the wav differ by at most {diff:.1e}")
        for n in (int(c) for c in clients.split(",")):
            rates: dict[str, list[float]] = {"bridle-serve": [], **{p.name: [] for p in peers}}
            for _ in range(2):
                for name in rates:
                    if name == "bridle-serve":
                        server, body, lua = serve(model_dir, {}), ours_body, WRK_SCRIPT
                    else:
                        server, body, lua = (
                            running_peer(PEERS[name], model_dir),
                            bodies[name],
                            PEERS[name].lua,
                        )
                    with server as url:
                        result = drive(wrk, url, body, n, seconds, lua=lua)
                    rates[name].append(result.throughput)
                    print(result.line(f"  {n} clients, {name}") + f"  ({load_average()})", flush=True)
            for p in peers:
                ratio = sum(rates["bridle-serve"]) / sum(rates[p.name])
                print(f"  {n} clients: bridle-serve / {p.name}: {ratio:.2f} (goal >= 1.1)")


if __name__ == "__main__":
    typer.run(main)
