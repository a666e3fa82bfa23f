"""The LitServe peer of `bench.peers`: the model's encoder session and the project's decoding in a LitAPI
with LitServe's dynamic batching. Needs `litserve` (`pip install -e '.[peers]'`)."""

from __future__ import annotations

import base64
from pathlib import Path

import litserve as ls
import numpy as np
import onnxruntime as ort

from bench.peers import one_window
from bridle.model.manifest import read_manifest


class Embed(ls.LitAPI):
    """JSON `{"wav": base64}` in, `{"embedding": [...]}` out (LitServe parses JSON or form bodies)."""

    def __init__(self, model_dir: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_dir = model_dir
        manifest = read_manifest(model_dir)
        self.samples, self.rate = int(manifest.input.shape[1]), int(manifest.input.sample_rate)

    def setup(self, device: str) -> None:
        encoder = str(self.model_dir / "encoder.onnx")
        self.session = ort.InferenceSession(encoder, providers=["CPUExecutionProvider"])

    def decode_request(self, request: dict) -> np.ndarray:
        return one_window(base64.b64decode(request["wav"]), self.samples, self.rate)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)  # (B, samples)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["embedding"], {"signal": x})[0]  # (B, D)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, list[float]]:
        return {"embedding": output.tolist()}


def run(model_dir: Path, port: int) -> None:
    """Up to 16 windows per batch, 5 ms to gather them; one worker, one API server."""
    api = Embed(model_dir, max_batch_size=16, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
