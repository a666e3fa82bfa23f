"""The CLI refuses to start on a broken model directory; the service never imports torch."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    # port 0: the kernel picks a free one, so tests that run at once never meet on a fixed port (the
    # service binds its socket before the engine finds a model it cannot load)
    cmd = [sys.executable, "-m", "bridle.service.cli", "--port", "0", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("damage", ["hash", "missing", "onnx"])
def test_broken_model_directory_stops_the_start(model_root: Path, tmp_path: Path, damage: str) -> None:
    broken = shutil.copytree(model_root / "audio", tmp_path / "broken")
    if damage == "hash":  # a changed byte: the manifest's sha256 no longer matches
        data = bytearray((broken / "encoder.onnx").read_bytes())
        data[-1] ^= 0xFF
        (broken / "encoder.onnx").write_bytes(bytes(data))
        expected = "sha256 mismatch"
    elif damage == "missing":
        (broken / "tokenizer.onnx").unlink()
        expected = "missing"
    else:  # garbage whose hash the manifest records: only ONNX Runtime can tell
        (broken / "encoder.onnx").write_bytes(b"not an onnx graph")
        manifest = json.loads((broken / "manifest.json").read_text())

        manifest["files"]["encoder"]["sha256"] = hashlib.sha256(b"not an onnx graph").hexdigest()
        (broken / "manifest.json").write_text(json.dumps(manifest))
        expected = "cannot load 'encoder.onnx'"
    result = serve("--model-dir", str(broken))
    assert result.returncode == 2, result.stderr
    assert "cannot start" in result.stderr and expected in result.stderr, result.stderr


def test_with_several_workers_the_parent_checks_the_models_first(model_root: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(model_root / "audio", tmp_path / "broken")
    (broken / "tokenizer.onnx").write_bytes(b"changed")  # a sha256 mismatch
    result = serve("--model-dir", str(broken), "--workers", "2")
    assert result.returncode == 2 and "sha256 mismatch" in result.stderr, result.stderr
    assert "Started parent process" not in result.stderr  # no worker was started


def test_no_model_directory_at_all(tmp_path: Path) -> None:
    result = serve("--model-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_the_service_imports_no_torch() -> None:
    code = (
        "import sys, bridle.service.app, bridle.service.cli, bridle.runtime.models, bridle.runtime.batcher; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_cli_serves_every_model_under_a_folder(model_root: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "bridle.service.cli", "--model-dir", str(model_root), "--port", str(port)]
    env = {**os.environ, "BRIDLE_PROVIDERS": "CPUExecutionProvider", "BRIDLE_MAX_BATCH_SIZE": "4"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 30 s"
            time.sleep(0.1)
        models = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"]
        assert sorted(m["name"] for m in models) == ["micro-audio", "micro-image", "micro-video"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "CPUExecutionProvider" in proc.stderr.read()  # the choice is logged
