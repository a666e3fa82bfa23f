"""The BEATs importer against a port of upstream's code: small models with every tensor seeded-random."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bridle.data import reference_beats as ref
from bridle.data.beats_files import (
    LABEL_DICT,
    LABELS,
    MODEL_CFG,
    NUM_FRAMES,
    TOKENIZER_CFG,
    make_model,
    make_tokenizer,
    save_upstream,
)
from bridle.export.verify import sample_inputs
from bridle.importers.beats import BeatsImportError, import_beats, write_import
from bridle.model.beats import beats_audio_input, relative_position_buckets
from bridle.model.checkpoint import load_servable
from bridle.model.config import ModelConfig
from bridle.model.manifest import sha256_file
from bridle.model.preprocessing import build_preprocessor

TOLERANCE = 1e-4  # max abs diff in float32


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("upstream")
    model, tokenizer = make_model(), make_tokenizer()
    return {
        "model": model,
        "tokenizer": tokenizer,
        "model_path": save_upstream(root / "BEATs_small.pt", model, MODEL_CFG, label_dict=LABEL_DICT),
        "tokenizer_path": save_upstream(root / "Tokenizer_small.pt", tokenizer, TOKENIZER_CFG),
    }


def _fbank(config: Any, batch: int = 6) -> torch.Tensor:
    """Speech-like and noise windows through the model's own preprocessing -> (B, 1, frames, 128)."""
    with torch.no_grad():
        return build_preprocessor(config)(torch.from_numpy(sample_inputs(config, batch)))


def test_features_logits_and_codes_match_the_reference(upstream: dict[str, Any]) -> None:
    servable = import_beats(upstream["model_path"], upstream["tokenizer_path"], num_frames=NUM_FRAMES)
    assert servable.labels == LABELS  # label_dict's index order, not its insertion order
    assert servable.config.classifier_activation == "sigmoid"
    assert servable.tokenizer_kind == "trained"
    x = _fbank(servable.config)
    with torch.no_grad():
        features = servable.encoder.features(x)
        logits = servable.classifier(servable.encoder.pooled(x))
        ref_features, ref_logits = upstream["model"].extract_features(x[:, 0])
        tokens = servable.tokenizer(x)
        ref_codes, ref_quantized = upstream["tokenizer"].extract_labels(x[:, 0])
    assert features.shape == (6, 32, 32)
    assert float((features - ref_features).abs().max()) <= TOLERANCE
    assert float((logits - ref_logits).abs().max()) <= TOLERANCE
    assert float(ref_logits.std()) > 0.1  # the logits are not flat: the comparison means something
    assert tokens.codes.shape == (6, 32, 1)
    assert torch.equal(tokens.codes[..., 0], ref_codes)
    assert len(ref_codes.unique()) > 4
    assert float((tokens.quantized - ref_quantized).abs().max()) <= TOLERANCE


def test_fbank_matches_the_upstream_preprocessing() -> None:
    """The encoder's input equals BEATs' `preprocess` (its fbank replaced by a float64 numpy one)."""
    config = ModelConfig(modality="audio", input=beats_audio_input(NUM_FRAMES))
    waves = sample_inputs(config, 4)
    ours = _fbank(config, 4)[:, 0]
    theirs = ref.preprocess(waves)  # (B, frames, 128); the window is exactly NUM_FRAMES frames
    assert theirs.shape == ours.shape
    assert float((ours - theirs).abs().max()) < 1e-4


@pytest.mark.parametrize("length", [32, 496])
@pytest.mark.parametrize(("buckets", "distance"), [(16, 20), (320, 800)])
def test_precomputed_buckets_equal_upstreams(length: int, buckets: int, distance: int) -> None:
    attention = ref.SelfAttention(ref.Config({"num_buckets": buckets, "max_distance": distance}))
    position = torch.arange(length)
    expected = attention._bucket(position[None, :] - position[:, None])
    got = relative_position_buckets(length, buckets, distance)
    assert torch.equal(got, expected)
    if length > distance:
        assert int(got.max()) == buckets - 1  # distances past max_distance share the last bucket


def test_saved_checkpoint_loads_back_with_provenance(upstream: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "servable"
    servable = write_import(out, upstream["model_path"], num_frames=NUM_FRAMES)
    back = load_servable(out)
    assert back.config == servable.config and back.labels == LABELS
    assert back.tokenizer_kind == "random"  # no tokenizer given
    prov = back.provenance
    assert prov["licence"] == "MIT" and "microsoft/unilm" in prov["source"]
    assert prov["model_checkpoint"] == {
        "file": "BEATs_small.pt",
        "sha256": sha256_file(upstream["model_path"]),
    }
    assert prov["tokenizer_checkpoint"] is None
    x = _fbank(back.config, 2)
    with torch.no_grad():
        assert torch.equal(back.encoder.features(x), servable.encoder.features(x))


# ---- bad checkpoints ---------------------------------------------------------------------------------


def _mutated(tmp_path: Path, model: torch.nn.Module, change: Any, cfg: dict[str, Any] | None = None) -> Path:
    payload = {
        "cfg": dict(cfg or MODEL_CFG),
        "model": dict(model.state_dict()),
        "label_dict": dict(LABEL_DICT),
    }
    change(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    return path


BAD = {
    "missing": (lambda p: p["model"].pop("encoder.layers.1.fc2.bias"), "1 missing tensor.*layers.1.fc2.bias"),
    "unknown": (lambda p: p["model"].update(extra=torch.zeros(3)), "1 unknown tensor.*extra"),
    "mis-shaped": (
        lambda p: p["model"].update({"predictor.weight": torch.zeros(7, 31)}),
        r"mis-shaped.*predictor.weight \(7, 31\) \(expected \(7, 32\)\)",
    ),
    "pre-LN": (lambda p: p["cfg"].update(layer_norm_first=True), "layer_norm_first=True.*not supported"),
    "activation": (lambda p: p["cfg"].update(activation_fn="relu"), "activation_fn 'relu' is not supported"),
    "unknown cfg": (lambda p: p["cfg"].update(rotary=True), r"does not know: \['rotary'\]"),
    "cfg type": (lambda p: p["cfg"].update(encoder_layers="2"), "'encoder_layers' must be int"),
    "no label_dict": (lambda p: p.pop("label_dict"), "fine-tuned.*no 'label_dict'"),
    "label_dict gap": (lambda p: p["label_dict"].pop(3), r"label_dict must map the class indices 0..6"),
    "duplicate labels": (lambda p: p["label_dict"].update({3: "Dog"}), "names must be distinct"),
    "shared bias differs": (
        lambda p: p["model"].update(
            {"encoder.layers.1.self_attn.relative_attention_bias.weight": torch.zeros(16, 4)}
        ),
        "layer 1's relative_attention_bias differs",
    ),
    "no cfg": (lambda p: p.pop("cfg"), "not in BEATs' layout"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_checkpoints_are_refused(case: str, upstream: dict[str, Any], tmp_path: Path) -> None:
    change, message = BAD[case]
    path = _mutated(tmp_path, upstream["model"], change)
    with pytest.raises(BeatsImportError, match=message):
        import_beats(path, num_frames=NUM_FRAMES)


def test_bad_files_are_refused(tmp_path: Path, upstream: dict[str, Any]) -> None:
    with pytest.raises(BeatsImportError, match="does not exist"):
        import_beats(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BeatsImportError, match="not a readable PyTorch checkpoint"):
        import_beats(garbage)
    # a pickle that would run code (weights_only refuses to build arbitrary objects)
    evil = tmp_path / "evil.pt"
    torch.save({"cfg": {}, "model": {}, "hook": Path("x")}, evil)
    with pytest.raises(BeatsImportError, match="weights_only=True"):
        import_beats(evil)
    with pytest.raises(
        BeatsImportError, match="num_frames 40 must be a positive multiple of the patch size 16"
    ):
        import_beats(upstream["model_path"], num_frames=40)


def test_bad_tokenizers_are_refused(upstream: dict[str, Any], tmp_path: Path) -> None:
    state = dict(upstream["tokenizer"].state_dict())
    cases = {
        "codebook": (
            {**state, "quantize.embedding.weight": 2 * state["quantize.embedding.weight"]},
            TOKENIZER_CFG,
            "codewords must be unit vectors",
        ),
        "uninitialised": (
            {**state, "quantize.embedding.initted": torch.zeros(1)},
            TOKENIZER_CFG,
            "never initialised",
        ),
        "patch": (state, {**TOKENIZER_CFG, "input_patch_size": 8}, "input_patch_size 8 differs"),
        "no quantizer": (
            {k: v for k, v in state.items() if not k.startswith("quantize.")},
            TOKENIZER_CFG,
            "5 missing tensor",
        ),
    }
    for name, (tensors, cfg, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"cfg": cfg, "model": tensors}, path)
        with pytest.raises(BeatsImportError, match=message):
            import_beats(upstream["model_path"], path, num_frames=NUM_FRAMES)
