"""Every stage on every modality (micro presets, synthetic media), and losses that go down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import micro_recipe, stage_losses

from bridle.model.checkpoint import load_servable
from bridle.training.distributed import DistInfo
from bridle.training.stages import prepare_run, run_stage


@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_every_stage_runs_and_the_classifier_beats_chance(modality: str, tmp_path: Path) -> None:
    # the classifier fine-tunes E for 20 steps; held-out clips (another seed) of the two classes
    finetune = ["stages.3.mode=finetune", "stages.3.steps=20"]
    recipe = micro_recipe(modality, tmp_path, finetune, test_per_class=4)
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    for index in range(len(recipe.stages)):
        run_stage(ctx, index, resume=False)
        stage_dir = Path(recipe.out_dir) / recipe.stage_name(index)
        assert (stage_dir / "checkpoint" / "weights.safetensors").is_file()
        assert (stage_dir / "loss.png").is_file()
    assert (Path(recipe.out_dir) / recipe.stage_name(0) / "usage.png").is_file()
    metrics = json.loads((Path(recipe.out_dir) / recipe.stage_name(3) / "metrics.json").read_text())
    assert metrics["test_examples"] == 8
    assert metrics["accuracy"] >= 0.75  # two balanced classes: chance is 0.5
    servable = load_servable(Path(recipe.out_dir) / "servable")
    assert servable.labels == ["high", "low"] and servable.tokenizer_kind == "trained"
    assert servable.provenance["stage"] == recipe.stage_name(3) and servable.provenance["step"] == 20
    if modality == "audio":  # fbank statistics measured on the training data, not the preset's
        assert servable.config.input.mean != -4.27


def test_first_pretrain_uses_a_frozen_random_tokenizer(tmp_path: Path) -> None:
    recipe = micro_recipe("image", tmp_path, ["stages=[{kind: pretrain, steps: 4}]"])
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    objective = run_stage(ctx, 0, resume=False).objective
    assert objective is not None and objective.tokenizer_kind == "random"
    codebooks = [b.clone() for n, b in objective.tokenizer.named_buffers() if n.endswith("codebooks")]
    assert codebooks and all(b.abs().sum() > 0 for b in codebooks)  # k-means-initialised on batch 1
    assert not any(p.requires_grad for p in objective.tokenizer.parameters())
    assert load_servable(Path(recipe.out_dir) / "servable").tokenizer_kind == "random"


def test_a_classifier_from_a_fresh_encoder_keeps_the_earlier_tokenizer(tmp_path: Path) -> None:
    # pretrain -> distil T -> classifier on a fresh E (encoder_init random): E is not the pretrained one,
    # T is the distilled one, and the servable holds both
    stages = [
        "stages=[{kind: pretrain, steps: 3}, {kind: tokenizer, steps: 3},"
        " {kind: classifier, mode: finetune, encoder_init: random, steps: 3}]"
    ]
    recipe = micro_recipe("image", tmp_path, stages, test=False)
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    pretrained = run_stage(ctx, 0, resume=False).objective.encoder.state_dict()
    distilled = run_stage(ctx, 1, resume=False).objective.tokenizer.state_dict()
    classifier = run_stage(ctx, 2, resume=False).objective
    servable = load_servable(Path(recipe.out_dir) / "servable")
    assert servable.tokenizer_kind == "trained"
    kept = {n: w for n, w in classifier.tokenizer.state_dict().items() if not n.endswith("frozen")}
    assert any(n.endswith("codebooks") for n in kept)
    for name, weight in kept.items():  # the weights and codebooks (not the freeze flag)
        assert torch.equal(weight, distilled[name]), name
    embed = "patch_embed.proj.weight"
    assert not torch.allclose(servable.encoder.state_dict()[embed], pretrained[embed])


def _early_late(losses: list[float]) -> tuple[float, float]:
    k = max(1, len(losses) // 4)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def test_pretrain_and_tokenizer_losses_go_down(tmp_path: Path) -> None:
    # one fixed batch (8 files, batch 8) repeated: the losses must fall clearly
    steps = [
        "stages=[{kind: pretrain, steps: 40, lr: 3.0e-3, warmup_steps: 4, log_every: 2},"
        " {kind: tokenizer, steps: 40, lr: 3.0e-3, warmup_steps: 4, log_every: 2}]"
    ]
    recipe = micro_recipe("image", tmp_path, steps, test=False)
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    for index in range(2):
        run_stage(ctx, index, resume=False)
        early, late = _early_late(stage_losses(recipe, index))
        assert late < 0.9 * early, (recipe.stages[index].kind, early, late)


def test_stage_alone_needs_the_earlier_stages(tmp_path: Path) -> None:
    from bridle.training.stages import StageError

    recipe = micro_recipe("image", tmp_path)
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    with pytest.raises(StageError, match="has not finished"):
        run_stage(ctx, 1, resume=False)
