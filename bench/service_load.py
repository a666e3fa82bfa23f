"""Load test of the inference service: `python -m bench.service_load [--model-dir DIR] [--seconds S]`.

Starts `bridle-serve` on loopback (a subprocess) with an audio model directory (default: the bundled
`models/audio-digits`, else a freshly exported tiny-audio model), drives `POST /embed` with many concurrent
clients (one-window wav bodies) and prints, from one run:

1. service throughput at saturation / in-process ONNX Runtime throughput on the same model and batch
   size (goal >= 0.85);
2. throughput with dynamic batching / without (max_batch_size=1) at 16 clients (goal >= 1.5);

each with p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import wave
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bridle_model.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_AUDIO = REPO / "models" / "audio-digits"


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    def line(self, label: str) -> str:
        return (
            f"{label:<34} {self.throughput:8.1f} req/s   p50 {self.percentile(50):7.1f} ms   "
            f"p99 {self.percentile(99):7.1f} ms   ({self.requests} ok, {self.errors} errors)"
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
    from bridle_model.checkpoint import build_servable
    from bridle_model.config import preset
    from export.model_dir import export_model_dir

    servable = build_servable(preset("tiny-audio"), labels=["a", "b"])
    return export_model_dir(servable, root / "tiny-audio", name="tiny-audio", run_verify=False).model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(model_dir: Path, max_batch_size: int, threads: int, queue_size: int = 4096):
    port = free_port()
    env = {
        **os.environ,
        "BRIDLE_MAX_BATCH_SIZE": str(max_batch_size),
        "BRIDLE_MAX_WAIT_MS": "5",
        "BRIDLE_QUEUE_SIZE": str(queue_size),
        "BRIDLE_INTRA_OP_THREADS": str(threads),
        "BRIDLE_API_KEY": "",
    }
    cmd = [sys.executable, "-m", "service.cli", "--model-dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def drive(url: str, body: bytes, clients: int, seconds: float, warmup: float = 1.0) -> LoadResult:
    """`clients` loops posting `body` back to back; counts what completes in `seconds` after `warmup`."""
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one_client() -> None:
            while (t0 := time.monotonic()) < stop_at:
                r = await client.post("/embed", content=body, headers={"content-type": "audio/wav"})
                t1 = time.monotonic()
                if t0 >= measure_from and t1 <= stop_at:
                    if r.status_code == 200:
                        counts["ok"] += 1
                        latencies.append(t1 - t0)
                    else:
                        counts["errors"] += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return LoadResult(counts["ok"], counts["errors"], seconds, latencies)


def ort_throughput(model_dir: Path, batch: int, threads: int, seconds: float) -> float:
    """Windows per second of the encoder run in-process at `batch`, with the service's session options."""
    from service.runtime import ProviderChooser, load_model

    model = load_model(model_dir, ProviderChooser(), threads)
    signal = np.random.default_rng(0).uniform(-0.3, 0.3, model.dummy_batch(batch).shape).astype(np.float32)
    model.run("encoder", signal)  # warm-up
    runs, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        model.run("encoder", signal)
        runs += 1
    return runs * batch / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, help="an audio model directory (default: models/audio-digits)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load phase")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients for the saturation phase")
    p.add_argument("--batch", type=int, default=16, help="max_batch_size of the batching service")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT default)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or (
            BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(Path(tmp))
        )
        manifest = read_manifest(model_dir)
        if manifest.modality != "audio":
            sys.exit(f"{model_dir} is a {manifest.modality} model; this bench drives an audio model")
        window = int(manifest.input.shape[1])
        body = wav_bytes(window, int(manifest.input.sample_rate or 16_000))
        print(
            f"model {manifest.name} ({model_dir}), "
            f"one {manifest.input.window_seconds:.3f} s window per request"
        )

        ort_rate = ort_throughput(model_dir, args.batch, args.threads, args.seconds)
        with serve(model_dir, args.batch, args.threads) as url:
            saturated = asyncio.run(drive(url, body, args.clients, args.seconds))
            batched16 = asyncio.run(drive(url, body, 16, args.seconds))
        with serve(model_dir, 1, args.threads) as url:
            single16 = asyncio.run(drive(url, body, 16, args.seconds))

    print(f"{'in-process ONNX Runtime, batch ' + str(args.batch):<34} {ort_rate:8.1f} windows/s")
    print(saturated.line(f"service, {args.clients} clients, batch <= {args.batch}"))
    print(batched16.line(f"service, 16 clients, batch <= {args.batch}"))
    print(single16.line("service, 16 clients, batch 1"))
    print(f"service at saturation / in-process ORT:  {saturated.throughput / ort_rate:.2f}  (goal >= 0.85)")
    print(
        f"dynamic batching / none at 16 clients:   "
        f"{batched16.throughput / single16.throughput:.2f}  (goal >= 1.5)"
    )


if __name__ == "__main__":
    main()
