"""`features.onnx`: the encoder's preprocessing cut out of `encoder.onnx` (bridle/export/features.py), in the
bundled models, added to an older model directory, and refused where there is no encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from bridle.export.cli import app
from bridle.export.features import FeaturesError, add_features, extract_features, features_tensor
from bridle.export.verify import sample_inputs
from bridle.model.manifest import FEATURES_GRAPH, MANIFEST_FILE, read_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = ("audio-digits", "image-digits", "video-motion")
CPU = ["CPUExecutionProvider"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=CPU)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_features_are_the_encoders_own_input(name: str) -> None:
    """features.onnx gives bit for bit the tensor the encoder's patch embedding reads."""
    root = MODELS / name
    manifest = read_manifest(root)  # hashes checked, features.onnx included
    assert manifest.features is not None and manifest.features.path == "features.onnx"
    encoder = onnx.load(str(root / "encoder.onnx"))
    inner = features_tensor(encoder)
    encoder.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))  # expose it
    signal = sample_inputs(manifest.config(), 3)
    (reference,) = _session(encoder).run([inner], {"signal": signal})
    (features,) = _session(onnx.load(str(root / "features.onnx"))).run(["features"], {"signal": signal})
    np.testing.assert_array_equal(features, reference)
    assert ["batch", *features.shape[1:]] == manifest.features.outputs[0].shape
    assert features.shape[1] in (1, 3) and np.isfinite(features).all() and features.std() > 0


def test_an_older_directory_gets_features_onnx_from_the_cli(tmp_path: Path) -> None:
    old = tmp_path / "audio-digits"
    shutil.copytree(MODELS / "audio-digits", old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    manifest["files"].pop(FEATURES_GRAPH)
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    (old / "features.onnx").unlink()
    assert read_manifest(old).features is None  # an older manifest still reads

    result = CliRunner().invoke(app, ["features", str(old)])
    assert result.exit_code == 0, result.output
    assert "signal -> features ['batch', 1, 128, 64]" in result.output
    added = read_manifest(old, check_hashes=True)
    assert added.features == read_manifest(MODELS / "audio-digits").features  # the same graph, hashed
    assert added.encoder == read_manifest(MODELS / "audio-digits").encoder  # the rest untouched


def test_a_graph_without_an_encoder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FeaturesError, match="no patch embedding found"):
        extract_features(MODELS / "image-digits" / "tokenizer.onnx")  # its weights are tokenizer.*
    result = CliRunner().invoke(app, ["features", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.json is missing" in result.output
    with pytest.raises(FeaturesError):
        add_features(_tokenizer_only(tmp_path))


def _tokenizer_only(tmp_path: Path) -> Path:
    """A copy of image-digits whose encoder.onnx is its tokenizer graph (hashes updated)."""
    from bridle.export.onnx_graphs import graph_file

    root = tmp_path / "swapped"
    shutil.copytree(MODELS / "image-digits", root)
    shutil.copyfile(root / "tokenizer.onnx", root / "encoder.onnx")
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    manifest["files"]["encoder"]["sha256"] = graph_file(root, "encoder.onnx").sha256
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return root
