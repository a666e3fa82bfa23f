"""`bridle-import beats` then `bridle-export` through the real CLIs: a verified model directory whose
ONNX Runtime outputs equal the upstream port's, with a sigmoid head and label_dict's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bridle.data.beats_files import LABELS, NUM_FRAMES, make_model, save_upstream
from bridle.export.verify import ort_session, sample_inputs, verify
from bridle.model.manifest import read_manifest
from bridle.model.preprocessing import build_preprocessor
from tests.importers.exported import Exported, run_cli

TOLERANCE = 1e-4


def test_export_verifies_and_declares_a_sigmoid_head(exported: Exported) -> None:
    assert "wrote" in exported.import_run.stdout and "PASSED" in exported.export_run.stdout
    manifest = read_manifest(exported.model_dir)
    assert manifest.classifier.activation == "sigmoid"
    assert manifest.labels == LABELS
    assert manifest.patch_grid == [NUM_FRAMES // 16, 8]
    assert (manifest.quantizer.levels, manifest.quantizer.codebook_size, manifest.quantizer.dim) == (
        1,
        32,
        16,
    )
    assert manifest.tokenizer_kind == "trained"
    assert manifest.provenance["licence"] == "MIT"
    assert manifest.provenance["model_checkpoint"]["file"] == "BEATs_small.pt"
    assert verify(exported.model_dir, exported.servable).ok


def test_onnx_runtime_outputs_equal_the_reference(exported: Exported) -> None:
    manifest = read_manifest(exported.model_dir)
    config = manifest.config()
    signal = sample_inputs(config, 5, seed=3)
    encoder = ort_session(exported.model_dir / "encoder.onnx")
    tokenizer = ort_session(exported.model_dir / "tokenizer.onnx")
    patches, embedding, logits = encoder.run(["patch_embeddings", "embedding", "logits"], {"signal": signal})
    codes, quantized = tokenizer.run(["codes", "quantized"], {"signal": signal})
    with torch.no_grad():
        fbank = build_preprocessor(config)(torch.from_numpy(signal))[:, 0]  # (B, frames, 128)
        ref_features, ref_logits = exported.model.extract_features(fbank)
        ref_codes, ref_quantized = exported.tokenizer.extract_labels(fbank)
    assert np.abs(patches - ref_features.numpy()).max() <= TOLERANCE
    assert np.abs(embedding - ref_features.mean(dim=1).numpy()).max() <= TOLERANCE
    assert np.abs(logits - ref_logits.numpy()).max() <= TOLERANCE
    assert np.array_equal(codes[..., 0], ref_codes.numpy())
    assert np.abs(quantized - ref_quantized.numpy()).max() <= TOLERANCE


def test_cli_refuses_bad_checkpoints_with_a_message(tmp_path: Path) -> None:
    model = make_model()
    bad_cfg = {"input_patch_size": 16, "encoder_layers": 2, "activation_fn": "swish"}
    path = save_upstream(tmp_path / "bad.pt", model, bad_cfg)
    run = run_cli("bridle.importers.cli", "beats", "--checkpoint", str(path), "--out", str(tmp_path / "out"))
    assert run.returncode == 1
    assert "error: model checkpoint bad.pt cfg is not supported: activation_fn 'swish'" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()

    run = run_cli("bridle.importers.cli", "beats", "--checkpoint", str(tmp_path / "missing.pt"), "--out", "x")
    assert run.returncode == 1 and "does not exist" in run.stderr and "Traceback" not in run.stderr


def test_cli_refuses_to_overwrite(exported: Exported) -> None:
    run = run_cli(
        "bridle.importers.cli",
        "beats",
        "--checkpoint",
        str(exported.model_path),
        "--out",
        str(exported.servable),
    )
    assert run.returncode == 1 and "exists and is not empty" in run.stderr
