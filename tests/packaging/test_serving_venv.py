"""The serving requirements install into a clean venv from their lock (requirements/serve-cpu.txt: every
version as pinned), without torch, and that venv serves /embed."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest

from bench.serve import free_port
from bridle.data.media_files import make_audio

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
READY_TIMEOUT_S = 40.0


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
    lock = REPO / "requirements" / "serve-cpu.txt"  # as `make serve ORT=cpu` and the CPU image install
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "-c", lock, f"{REPO}[serve,cpu]"], check=True, timeout=300
    )
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    installed = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in freeze.split()
        if "==" in line
    }
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            name, version = line.split("==")
            assert installed.get(name.lower().replace("_", "-")) == version, (
                name,
                version,
                installed.get(name),
            )

    port = free_port()
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
        status, reply = _post_file(f"{base}/embed", make_audio("wav", 2.0))
        assert status == 200
        result = reply["results"][0]
        assert result["dim"] == len(result["embedding"]) > 0
        assert np.isfinite(result["embedding"]).all()
    finally:
        server.terminate()
        server.wait(timeout=10)
