"""The downstream head: pooled embedding -> LayerNorm -> Linear -> class logits."""

from __future__ import annotations

import torch
from torch import nn

from bridle.model.transformer import init_linear_and_norm


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least one class, got {num_classes}")
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        self.apply(init_linear_and_norm)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(pooled))  # (B, D) -> (B, C)
