"""bf16 autocast on CPU with the residual quantizer in fp32; gradient accumulation; the settings' checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import micro_recipe

from bridle.model.bridle import Classification, Distillation, Pretraining
from bridle.model.config import preset
from bridle.model.encoder import Encoder
from bridle.model.quantizer import ResidualQuantizer
from bridle.model.tokenizer import RandomProjectionTokenizer
from bridle.training.distributed import DistInfo
from bridle.training.precision import autocast
from bridle.training.recipe import RecipeError
from bridle.training.stages import accumulate_gradients, prepare_run, run_stage
from bridle.training.state import load_stage

CPU = torch.device("cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    cfg = preset("micro-image")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg.input.image_size, cfg.input.image_size, generator=g)  # (n, 3, S, S)


def test_bf16_runs_the_networks_in_bf16_and_the_quantizer_in_fp32() -> None:
    cfg = preset("micro-image")
    torch.manual_seed(0)
    step = Distillation(cfg, Encoder(cfg)).train()
    seen: dict[str, torch.dtype] = {}
    quantizer = next(m for m in step.tokenizer.modules() if isinstance(m, ResidualQuantizer))
    quantizer.register_forward_pre_hook(lambda m, args: seen.update(quantizer_input=args[0].dtype))
    step.estimator.register_forward_hook(lambda m, args, out: seen.update(estimator_output=out.dtype))
    x = _images(4)
    with autocast("bf16", CPU):
        loss, _ = step(x)
    loss.backward()
    assert seen == {"quantizer_input": torch.float32, "estimator_output": torch.bfloat16}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert quantizer.codebooks.dtype == torch.float32 and bool(quantizer.initialized.all())
    grads = [p.grad for p in step.tokenizer.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)  # straight-through


def test_pretraining_targets_are_the_fp32_codes_under_bf16() -> None:
    cfg = preset("micro-image")
    torch.manual_seed(0)
    step = Pretraining(cfg, RandomProjectionTokenizer(cfg), "random").train()
    x = _images(8)
    reference = step.forward_targets(x)  # fits the codebooks, fp32
    with autocast("bf16", CPU):
        assert torch.equal(step.forward_targets(x), reference)


def test_fp32_is_no_autocast() -> None:
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu")


def test_accumulating_k_micro_batches_equals_one_k_times_batch() -> None:
    cfg = preset("micro-image")
    torch.manual_seed(0)
    encoder = Encoder(cfg)
    step = Classification(cfg, encoder, RandomProjectionTokenizer(cfg), "random", 3, "finetune").train()
    x, y = _images(12, seed=1), torch.arange(12) % 3

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in step.named_parameters() if p.grad is not None}
        step.zero_grad(set_to_none=True)
        return out

    whole = accumulate_gradients(step, [(x, y)], 1, "fp32", CPU)
    one = grads()
    micro = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]  # k = 3 micro-batches of 4
    parts = accumulate_gradients(step, iter(micro), 3, "fp32", CPU)
    three = grads()
    assert one.keys() == three.keys() and len(one) > 4
    for name in one:
        torch.testing.assert_close(three[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
    assert parts["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    # and a different split is not the same: accumulation without the 1/k scale would be k times larger
    accumulate_gradients(step, iter(micro), 1, "fp32", CPU)
    tripled = grads()
    assert not torch.allclose(tripled["classifier.linear.weight"], one["classifier.linear.weight"])


def test_a_bf16_run_with_accumulation_trains_every_stage(tmp_path: Path) -> None:
    extra = ["train.precision=bf16", "train.accumulate=2", "train.fused_optimizer=true", "stages.3.steps=2"]
    recipe = micro_recipe("image", tmp_path, extra, test=False)
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    for index in range(len(recipe.stages)):
        summary = run_stage(ctx, index, resume=False).summary
        state = load_stage(Path(recipe.out_dir) / recipe.stage_name(index))
        assert state is not None and state.done
        assert state.extra["data_position"] == 2 * summary["step"]  # two micro-batches a step
        assert all(torch.isfinite(torch.tensor(v)) for v in state.extra["history"]["loss"])
        books = [b for n, b in state.weights["tokenizer"].items() if n.endswith("codebooks")]
        assert books and all(b.dtype == torch.float32 for b in books)


def test_time_budget_ends_a_stage_early(tmp_path: Path) -> None:
    recipe = micro_recipe("image", tmp_path, ["stages=[{kind: pretrain, steps: 500, max_seconds: 0.5}]"])
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    summary = run_stage(ctx, 0, resume=False).summary
    assert 1 <= summary["step"] < 500 and summary["stopped"] == "time budget of 0.5 s"
    state = load_stage(Path(recipe.out_dir) / recipe.stage_name(0))
    assert state is not None and state.done and state.step == summary["step"]
    assert state.extra["history"]["step"][-1] == summary["step"]  # the last step is logged


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.precision=fp16", "train.precision"),
        ("train.accumulate=0", "train.accumulate"),
        ("stages.0.accumulate=1.5", "stages.0.accumulate"),
        ("stages.0.max_seconds=0", "stages.0.max_seconds"),
        ("data.prefetch_factor=0", "data.prefetch_factor"),
        ("train.compile=maybe", "train.compile"),
        ("train.bogus=1", "unknown keys"),
    ],
)
def test_bad_training_settings_are_refused(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        micro_recipe("image", tmp_path, [override])
