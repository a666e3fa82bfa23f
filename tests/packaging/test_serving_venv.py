"""The serving requirements install into a clean venv without torch, and that venv serves /embed."""

from __future__ import annotations

import io
import socket
import subprocess
import time
import urllib.request
import venv
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
READY_TIMEOUT_S = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wav_bytes(seconds: float = 2.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440.0 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _post_file(url: str, data: bytes) -> tuple[int, dict]:
    import json

    boundary = "bridle-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
def test_serving_extras_install_without_torch_and_serve(tmp_path: Path) -> None:
    if not any(MODELS.iterdir()):
        pytest.skip("models/ is empty: no bundled model directory to serve yet")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", f"{REPO}[serve,cpu]"], check=True, timeout=300)
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0

    port = _free_port()
    server = subprocess.Popen(
        [env_dir / "bin" / "bridle-serve", "--host", "127.0.0.1", "--port", str(port), "--model-dir", MODELS],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "service not ready in time"
            time.sleep(0.5)
        status, reply = _post_file(f"{base}/embed", _wav_bytes())
        assert status == 200
        result = reply["results"][0]
        assert result["dim"] == len(result["embedding"]) > 0
        assert np.isfinite(result["embedding"]).all()
    finally:
        server.terminate()
        server.wait(timeout=10)
