"""AdamW with weight decay on weights only, and a linear warm-up then half-cosine learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

ADAMW_BETAS = (0.9, 0.95)
NO_DECAY_NAMES = ("cls", "mask_token", "pos")  # learned tokens and position embeddings


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed weights and undecayed norms/biases/tokens/positions."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim < 2 or any(key in leaf for key in NO_DECAY_NAMES):
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: int):
    """lr factor: linear 0 -> 1 over `warmup_steps`, then half a cosine from 1 to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(
    modules: Iterable[nn.Module],
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    fused: bool = False,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + schedule; `fused`: one fused kernel for the whole update (CUDA, CPU) instead of foreach."""
    groups = param_groups(modules, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS, fused=True if fused else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    return optimizer, scheduler
