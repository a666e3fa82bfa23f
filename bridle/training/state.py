"""Resumable training state of one stage, in `out_dir/<stage>/checkpoint/`.

    weights.safetensors   the stage's networks, keys prefixed by part ("encoder.", "predictor.", ...)
    config.json           model config, tokenizer kind, step, total steps, done flag
    state.pt              optimiser, scheduler, RNG (torch, numpy, python), loss/usage history

The folder is written as a whole beside the target and renamed into place
(`bridle.model.checkpoint.write_directory_atomically`), so a kill never leaves a mixed checkpoint.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bridle.model.atomic import write_directory_atomically
from bridle.model.config import ModelConfig

CHECKPOINT_DIR = "checkpoint"


@dataclass
class StageState:
    step: int
    total_steps: int
    done: bool
    tokenizer_kind: str
    config: ModelConfig
    weights: dict[str, dict[str, torch.Tensor]]  # part -> state dict
    extra: dict[str, Any] = field(default_factory=dict)  # optimiser, scheduler, rng, history


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_stage(
    stage_dir: Path,
    parts: dict[str, nn.Module],
    config: ModelConfig,
    tokenizer_kind: str,
    step: int,
    total_steps: int,
    done: bool,
    extra: dict[str, Any],
) -> Path:
    tensors = {
        f"{prefix}.{key}": value.detach().to("cpu").contiguous().clone()
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }
    meta = {
        "model": config.to_dict(),
        "tokenizer_kind": tokenizer_kind,
        "step": step,
        "total_steps": total_steps,
        "done": done,
        "parts": sorted(parts),
    }
    buffer = io.BytesIO()
    torch.save({**extra, "rng": rng_state()}, buffer)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / "state.pt").write_bytes(buffer.getvalue())

    return write_directory_atomically(stage_dir / CHECKPOINT_DIR, write)


def load_stage(stage_dir: Path) -> StageState | None:
    """The stage's last checkpoint, or None when it has none."""
    root = stage_dir / CHECKPOINT_DIR
    if not (root / "config.json").is_file():
        return None
    meta = json.loads((root / "config.json").read_text(encoding="utf-8"))
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(root / "weights.safetensors")).items():
        prefix, _, name = key.partition(".")
        weights.setdefault(prefix, {})[name] = value
    extra = torch.load(root / "state.pt", weights_only=False)
    return StageState(
        step=int(meta["step"]),
        total_steps=int(meta["total_steps"]),
        done=bool(meta["done"]),
        tokenizer_kind=str(meta["tokenizer_kind"]),
        config=ModelConfig.from_dict(meta["model"]),
        weights=weights,
        extra=extra,
    )
