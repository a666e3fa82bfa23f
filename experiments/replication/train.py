"""Training the replication's variants with the ordinary stages of bridle/training/stages.py.

One folder per variant under `<seed_dir>`; the iteration-1 stage is trained once per seed (`iter1/`) and its
folder copied into every other variant, so they all continue the same encoder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridle.model.bridle import Objective
from bridle.model.config import ModelConfig
from bridle.model.encoder import Encoder
from bridle.model.quantizer import ResidualQuantizer
from bridle.training.distributed import DistInfo
from bridle.training.recipe import Recipe, recipe_from_dict
from bridle.training.stages import MODEL_CONFIG_FILE, RunContext, prepare_run, run_stage
from bridle.training.state import load_stage
from experiments.replication.plan import ITER1, ITER1_LONG, Budget, TokenizerArm

PRETRAIN1, PRETRAIN1_LONG, TOKENIZER, PRETRAIN2 = "pretrain1", "pretrain1-long", "tokenizer", "pretrain2"


@dataclass
class Trained:
    """One variant's final networks and where its stages are."""

    ctx: RunContext
    encoder: nn.Module  # the last encoder (for a distillation-only arm: its teacher, iter1's E)
    tokenizer: nn.Module  # the last tokenizer
    stages: list[str]  # the stage folders under ctx.out_dir this variant trained itself


def stage_recipe(budget: Budget, modality: str, train: Path, seed: int, out: Path, plan: list[str]) -> Recipe:
    """A recipe of the named stages (see the module's constants) with the budget's steps."""
    kinds = {PRETRAIN1: "pretrain", PRETRAIN1_LONG: "pretrain", TOKENIZER: "tokenizer", PRETRAIN2: "pretrain"}
    stages = []
    for name in plan:
        distil = kinds[name] == "tokenizer"
        steps = budget.tokenizer_steps if distil else budget.pretrain_steps
        lr = budget.tokenizer_lr if distil else budget.pretrain_lr
        stages.append(
            {"kind": kinds[name], "name": name, "steps": steps, "lr": lr, "warmup_steps": max(1, steps // 10)}
        )
    return recipe_from_dict(
        {
            "name": f"replicate-{modality}-seed{seed}",
            "seed": seed,
            "out_dir": str(out),
            "checkpoint_every": 10**9,  # only the final checkpoint of each stage
            "model": {"preset": f"{budget.size}-{modality}"},
            "data": {"train": str(train), "modality": modality, "batch_size": budget.batch_size},
            "stages": [{"log_every": budget.log_every, **s} for s in stages],
        }
    )


def _run(ctx: RunContext, first: int) -> Objective:
    objective = None
    for index in range(first, len(ctx.recipe.stages)):
        objective = run_stage(ctx, index, resume=True).objective
    if objective is None:
        raise RuntimeError(f"the last stage had finished earlier in {ctx.out_dir}; use a new --out")
    return objective


def train_iter1(budget: Budget, modality: str, train: Path, seed: int, seed_dir: Path) -> Trained:
    out = seed_dir / ITER1
    recipe = stage_recipe(budget, modality, train, seed, out, [PRETRAIN1])
    ctx = prepare_run(recipe, DistInfo(), reuse_config=False)
    objective = _run(ctx, 0)
    return Trained(ctx, objective.encoder, objective.tokenizer, [PRETRAIN1])


def _continue_iter1(seed_dir: Path, out: Path, quantizer: dict[str, Any]) -> None:
    """Copy iter1's stage and its model config (this variant's quantizer) into `out`."""
    first = seed_dir / ITER1
    if not (out / PRETRAIN1).is_dir():
        shutil.copytree(first / PRETRAIN1, out / PRETRAIN1)
    config = ModelConfig.from_dict(
        json.loads((first / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    ).to_dict()
    config["quantizer"] = {**config["quantizer"], **quantizer}  # iter1's config and fbank statistics
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def train_iter1_long(budget: Budget, modality: str, train: Path, seed: int, seed_dir: Path) -> Trained:
    out = seed_dir / ITER1_LONG
    _continue_iter1(seed_dir, out, {})
    recipe = stage_recipe(budget, modality, train, seed, out, [PRETRAIN1, PRETRAIN1_LONG])
    ctx = prepare_run(recipe, DistInfo(), reuse_config=True)
    objective = _run(ctx, 1)
    return Trained(ctx, objective.encoder, objective.tokenizer, [PRETRAIN1_LONG])


def train_arm(
    arm: TokenizerArm, budget: Budget, modality: str, train: Path, seed: int, seed_dir: Path
) -> Trained:
    """Distil the arm's tokenizer from iter1's encoder (and pretrain an iteration-2 encoder on it)."""
    out = seed_dir / arm.name
    _continue_iter1(seed_dir, out, arm.quantizer)
    plan = [PRETRAIN1, TOKENIZER, PRETRAIN2] if arm.pretrain else [PRETRAIN1, TOKENIZER]
    ctx = prepare_run(stage_recipe(budget, modality, train, seed, out, plan), DistInfo(), reuse_config=True)
    with static_codebooks(arm.static):
        objective = _run(ctx, 1)
    return Trained(ctx, objective.encoder, objective.tokenizer, plan[1:])


def random_init_encoder(config: ModelConfig, seed: int) -> Encoder:
    """The encoder iter1 of `seed` starts from: stages.build_objective seeds `recipe.seed + index` (index 0)
    and the encoder is the first network it draws random weights for."""
    torch.manual_seed(seed)
    return Encoder(config)


@contextmanager
def static_codebooks(enabled: bool = True) -> Iterator[None]:
    """While active, every quantizer is frozen on its first forward once its codebooks are initialised
    (k-means on the first batch, or random at construction): no EMA steps and no restarts afterwards."""
    if not enabled:
        yield
        return

    def freeze_when_initialised(module: nn.Module, args: Any) -> None:
        if (
            isinstance(module, ResidualQuantizer)
            and bool(module.initialized.all())
            and not bool(module.frozen)
        ):
            module.freeze()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(freeze_when_initialised)
    try:
        yield
    finally:
        handle.remove()


def stage_history(stage_dir: Path) -> dict[str, list[Any]]:
    """The monitor's record of a finished stage: step, loss and per-level usage on training batches."""
    state = load_stage(stage_dir)
    if state is None or "history" not in state.extra:
        raise FileNotFoundError(f"no finished stage with a history in {stage_dir}")
    return state.extra["history"]
