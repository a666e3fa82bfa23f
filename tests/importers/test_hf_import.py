"""`bridle-import hf` then `bridle-export` (the real CLIs, in process) on Hugging Face folders that
transformers wrote with seeded random weights: ONNX Runtime's embedding equals the input of transformers'
own classification head (1e-4), the top-1 is the same, labels are config.id2label; bad folders are
refused with a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bridle.export.verify import ort_session
from bridle.model.manifest import read_manifest

pytest.importorskip("transformers", reason="the parity tests need the `import` extra (transformers)")

from bridle.data.hf_models import FAMILIES, LABELS, load_model, make_folder, reference, sample_input
from bridle.importers.cli import app as import_app
from tests.importers.hf_export import EXPECTED_LABELS, TOLERANCE, import_and_export, runner


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_embedding_is_the_heads_input(family: str, root: Path) -> None:
    folder = make_folder(family, root)
    model_dir = import_and_export(folder, root)
    manifest = read_manifest(model_dir)
    assert manifest.labels == EXPECTED_LABELS
    assert manifest.tokenizer_kind == "random"

    signal = sample_input(family, folder, batch=4, seed=1)
    patches, embedding, logits = ort_session(model_dir / "encoder.onnx").run(
        ["patch_embeddings", "embedding", "logits"], {"signal": signal}
    )
    ref_embedding, ref_logits = reference(family, folder, load_model(folder), signal)
    assert embedding.shape == ref_embedding.shape
    assert np.abs(embedding - ref_embedding).max() <= TOLERANCE
    assert np.abs(logits - ref_logits).max() <= TOLERANCE
    assert np.array_equal(logits.argmax(1), ref_logits.argmax(1))
    assert list(patches.shape[1:]) == [int(np.prod(manifest.patch_grid)), 32]
    (codes,) = ort_session(model_dir / "tokenizer.onnx").run(["codes"], {"signal": signal})
    assert codes.shape[:2] == patches.shape[:2]  # one code per encoder patch, on the same grid


@pytest.mark.slow
def test_ast_patches_are_time_major(root: Path) -> None:
    """AST numbers its patches mel-major; the model directory's grid is (time, mel), row-major."""
    import torch

    folder = make_folder("ast", root / "ast-order")
    model_dir = import_and_export(folder, root / "ast-order")
    manifest = read_manifest(model_dir)
    assert manifest.patch_grid == [10, 7] and manifest.grid_axes[0] == "time"
    signal = sample_input("ast", folder, batch=2)
    (patches,) = ort_session(model_dir / "encoder.onnx").run(["patch_embeddings"], {"signal": signal})
    model = load_model(folder)
    from transformers import ASTFeatureExtractor

    values = ASTFeatureExtractor.from_pretrained(folder)(
        list(signal), sampling_rate=16_000, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model.audio_spectrogram_transformer(**values).last_hidden_state[:, 2:]  # (B, mel * time, D)
    by_mel = hidden.reshape(2, 7, 10, -1).transpose(1, 2).reshape(2, 70, -1).numpy()  # -> time-major
    assert np.abs(patches - by_mel).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_headless_model_serves_embeddings_only(family: str, root: Path) -> None:
    import torch

    folder = make_folder(family, root / "headless", head=False)
    model_dir = import_and_export(folder, root / "headless")
    manifest = read_manifest(model_dir)
    assert manifest.labels == []
    session = ort_session(model_dir / "encoder.onnx")
    assert [o.name for o in session.get_outputs()] == ["patch_embeddings", "embedding"]
    signal = sample_input(family, folder, batch=2)
    (embedding,) = session.run(["embedding"], {"signal": signal})
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(folder)(
        list(signal.transpose(0, 2, 3, 1)), do_resize=False, do_center_crop=False, return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        hidden = load_model(folder)(pixel_values=pixels).last_hidden_state  # (B, 1 + N, D)
    cls = hidden[:, 0]
    want = torch.cat([cls, hidden[:, 1:].mean(1)], dim=1) if family == "dinov2" else cls
    assert np.abs(embedding - want.numpy()).max() <= TOLERANCE


@pytest.mark.parametrize("family", ["ast", "dinov2", "videomae"])
def test_a_bridle_tokenizer_fits_the_encoders_grid(family: str, root: Path) -> None:
    """The servable's config builds a trainable BRIDLE tokenizer (for `bridle-train tokenizer`) whose
    codes lie on the encoder's patch grid, overlapping AST patches included."""
    import torch

    from bridle.importers.hf import import_hf
    from bridle.model.checkpoint import build_servable
    from bridle.model.preprocessing import build_preprocessor

    folder = make_folder(family, root / "tok")
    config = import_hf(folder).config
    servable = build_servable(config, tokenizer_kind="trained")
    x = build_preprocessor(config)(torch.from_numpy(sample_input(family, folder, batch=2)))
    with torch.no_grad():
        codes = servable.tokenizer(x).codes  # (B, N, L)
        features = servable.encoder.features(x)  # (B, N, D)
    assert codes.shape[:2] == features.shape[:2] == (2, config.num_patches)


# ---- bad folders ------------------------------------------------------------------------------------


def _import(folder: Path, out: Path) -> tuple[int, str]:
    run = runner.invoke(import_app, ["hf", "--checkpoint", str(folder), "--out", str(out)])
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
    return run.exit_code, run.output


def test_unknown_model_type_is_refused(root: Path) -> None:
    folder = make_folder("vit", root / "bad-type")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "swin"}))
    code, out = _import(folder, root / "bad-type-out")
    assert code == 1 and "model_type 'swin' is not supported" in out and "vit" in out


def test_missing_files_are_named(root: Path) -> None:
    folder = make_folder("vit", root / "missing")
    (folder / "model.safetensors").unlink()
    code, out = _import(folder, root / "missing-out")
    assert code == 1 and "has no model.safetensors" in out
    code, out = _import(root / "nowhere", root / "missing-out")
    assert code == 1 and "does not exist" in out


def test_mismatched_weights_are_named(root: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = make_folder("deit", root / "mismatch")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    del state["deit.encoder.layer.1.attention.attention.key.bias"]
    state["deit.layernorm.weight"] = state["deit.layernorm.weight"][:16].clone()
    state["deit.extra.weight"] = state["classifier.bias"].clone()
    save_file(state, str(weights))
    code, out = _import(folder, root / "mismatch-out")
    assert code == 1
    assert "missing tensor encoder.layer.1.attention.attention.key.bias" in out
    assert "norm.weight: shape (16,), expected (32,)" in out
    assert not (root / "mismatch-out").exists()

    # a folder whose only fault is a stray tensor
    state = load_file(str(make_folder("deit", root / "stray") / "model.safetensors"))
    state["deit.extra.weight"] = state["classifier.bias"].clone()
    save_file(state, str(root / "stray" / "deit" / "model.safetensors"))
    code, out = _import(root / "stray" / "deit", root / "stray-out")
    assert code == 1 and "1 tensor(s) this deit config does not use: extra.weight" in out


def test_labels_must_match_the_head(root: Path) -> None:
    folder = make_folder("vit", root / "labels")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS[:3])}
    (folder / "config.json").write_text(json.dumps(config))
    code, out = _import(folder, root / "labels-out")
    assert code == 1 and "id2label must name the 5 classes" in out
