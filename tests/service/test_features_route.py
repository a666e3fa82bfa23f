"""`POST /features` on a real server: the encoder's input as the model saw it, from `features.onnx`.

That `features.onnx` is the encoder's own preprocessing is tested in tests/export/test_features.py."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import API_KEY, Server, run_server

from bridle.model.manifest import FEATURES_GRAPH, MANIFEST_FILE, read_manifest
from bridle.runtime.windows import Limits, to_windows

KEY = {"X-API-Key": API_KEY}
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def old_dir(unlabelled_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory as exported before features.onnx existed (plain-image)."""
    old = tmp_path_factory.mktemp("old") / "plain"
    shutil.copytree(unlabelled_dir, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    (old / manifest["files"].pop(FEATURES_GRAPH)["path"]).unlink()
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    return old


@pytest.fixture(scope="module")
def server(model_root: Path, old_dir: Path) -> Iterator[Server]:
    yield from run_server([model_root, old_dir], api_key=API_KEY)


def features_of(server: Server, name: str, data: bytes, ctype: str, **params) -> dict:
    r = server.client.post("/features", params=params, files={"file": (name, data, ctype)}, headers=KEY)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    return result


@pytest.mark.parametrize(("fmt", "modality"), [("wav", "audio"), ("png", "image"), ("mp4", "video")])
def test_features_are_the_preprocessing_of_the_decoded_windows(
    server: Server, model_root: Path, media_files, long_audio, fmt: str, modality: str
) -> None:
    data, ctype = long_audio[:2] if modality == "audio" else media_files[fmt]
    result = features_of(server, f"x.{fmt}", data, ctype)
    manifest = read_manifest(model_root / modality)
    windows = to_windows(manifest, data, Limits(600.0, 50_000_000, 600.0))
    session = ort.InferenceSession(str(model_root / modality / "features.onnx"), providers=[CPU])
    (expected,) = session.run(["features"], {"signal": windows.signal})
    f = result["features"]
    got = np.frombuffer(base64.b64decode(f["data"]), "<f4").reshape(f["shape"])
    assert f["dtype"] == "float32" and list(got.shape) == list(expected.shape)
    assert got.shape[0] == len(result["windows"]) == len(windows.spans)
    assert (got.shape[0] > 1) == (modality == "audio")  # 2.5 windows of audio: 3 windows
    np.testing.assert_array_equal(got, expected)  # what the graph computed, bit for bit
    assert result["model"] == f"micro-{modality}" and result["patch_grid"] == manifest.patch_grid
    assert result["preprocessing"] == manifest.model_config["input"]


def test_a_model_directory_without_features_onnx_still_serves_and_says_why_not(
    server: Server, media_files
) -> None:
    data, ctype = media_files["png"]
    files = {"file": ("x.png", data, ctype)}
    r = server.client.post("/features", params={"model": "plain-image"}, files=files, headers=KEY)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "no_features" and "bridle-export features" in error["message"]
    r = server.client.post("/embed", params={"model": "plain-image"}, files=files, headers=KEY)
    assert r.status_code == 200, r.text


def test_features_need_the_api_key(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    r = server.client.post("/features", files={"file": ("x.png", data, ctype)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
