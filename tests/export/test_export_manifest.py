"""manifest.json: round trip, validation with clear errors, hash checks, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridle.model.config import preset
from bridle.model.manifest import (
    GraphFile,
    InputSpec,
    Manifest,
    ManifestError,
    QuantizerSpec,
    TensorSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)

CONTRACT_KEYS = {
    "format_version",
    "name",
    "modality",
    "input",
    "windowing",
    "patch_grid",
    "grid_axes",
    "embedding_dim",
    "quantizer",
    "tokenizer_kind",
    "labels",
    "opset",
    "files",
    "model_config",
    "provenance",
    "classifier",
    "precision",
    "gate",
}


def _model_dir(tmp_path: Path) -> tuple[Path, Manifest]:
    """A model directory with placeholder graph files (the manifest does not parse ONNX)."""
    (tmp_path / "encoder.onnx").write_bytes(b"encoder graph bytes")
    (tmp_path / "tokenizer.onnx").write_bytes(b"tokenizer graph bytes")
    cfg = preset("micro-image")
    signal = TensorSpec("signal", "uint8", ["batch", 3, 16, 16])
    manifest = Manifest(
        name="m",
        modality="image",
        input=InputSpec("signal", "uint8", ["batch", 3, 16, 16], image_size=16),
        patch_grid=[4, 4],
        grid_axes=["height", "width"],
        embedding_dim=32,
        quantizer=QuantizerSpec(levels=2, codebook_size=16, dim=16),
        tokenizer_kind="trained",
        labels=["a", "b"],
        opset=18,
        files={
            "encoder": GraphFile(
                "encoder.onnx",
                sha256_file(tmp_path / "encoder.onnx"),
                [signal],
                [TensorSpec("embedding", "float32", ["batch", 32])],
            ),
            "tokenizer": GraphFile(
                "tokenizer.onnx",
                sha256_file(tmp_path / "tokenizer.onnx"),
                [signal],
                [TensorSpec("codes", "int64", ["batch", 16, 2])],
            ),
        },
        model_config=cfg.to_dict(),
        provenance={"recipe": "r", "step": 3},
    )
    write_manifest(tmp_path, manifest)
    return tmp_path, manifest


def _edit(model_dir: Path, edit) -> None:
    path = model_dir / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    model_dir, manifest = _model_dir(tmp_path)
    raw = json.loads((model_dir / "manifest.json").read_text())
    assert set(raw) == CONTRACT_KEYS
    back = read_manifest(model_dir)
    assert back == manifest
    assert back.config() == preset("micro-image")
    assert back.encoder.output("embedding") == TensorSpec("embedding", "float32", ["batch", 32])
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_sha256_mismatch_names_the_file(tmp_path: Path) -> None:
    model_dir, _ = _model_dir(tmp_path)
    (model_dir / "tokenizer.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=r"sha256 mismatch for 'tokenizer.onnx'"):
        read_manifest(model_dir)
    assert read_manifest(model_dir, check_hashes=False).name == "m"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("labels"), "lacks the field 'labels'"),
        (lambda d: d.update(embedding_dim="32"), "'embedding_dim' must be int"),
        (lambda d: d.update(modality="smell"), "modality 'smell'"),
        (lambda d: d.update(format_version=2), "format_version 2 is not supported"),
        (lambda d: d["files"].pop("tokenizer"), r"files lacks \['tokenizer'\]"),
        (lambda d: d["files"]["encoder"].update(path="../encoder.onnx"), "must be a file name inside"),
        (lambda d: d["input"].pop("shape"), "input lacks the field 'shape'"),
        (lambda d: d["quantizer"].update(levels=None), "levels' must be int"),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, edit, message: str) -> None:
    model_dir, _ = _model_dir(tmp_path)
    _edit(model_dir, edit)
    with pytest.raises(ManifestError, match=message):
        read_manifest(model_dir)


def test_missing_directory_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match=r"manifest\.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_missing_graph_file(tmp_path: Path) -> None:
    model_dir, _ = _model_dir(tmp_path)
    (model_dir / "encoder.onnx").unlink()
    with pytest.raises(ManifestError, match=r"'encoder\.onnx' listed in the manifest is missing"):
        read_manifest(model_dir, check_hashes=False)


@pytest.mark.parametrize(
    ("modality", "fields", "missing"),
    [
        ("audio", {"sample_rate": None, "window_seconds": 1.0}, r"\['sample_rate'\]"),
        ("audio", {"sample_rate": 16000}, r"\['window_seconds'\]"),
        ("video", {"clip_frames": 4}, r"\['window_seconds'\]"),
    ],
)
def test_a_manifest_without_its_window_is_refused_not_guessed(
    tmp_path: Path, modality: str, fields: dict, missing: str
) -> None:
    model_dir, _ = _model_dir(tmp_path)

    def older(raw: dict) -> None:
        raw["modality"] = modality
        raw["input"].update(fields)

    _edit(model_dir, older)
    with pytest.raises(ManifestError, match=rf"lacks {missing}: .* export the model again"):
        read_manifest(model_dir)


def test_manifest_module_imports_no_torch() -> None:
    code = (
        "import sys, bridle.model.manifest; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
