"""TE, the tokenizer estimator: predicts the teacher encoder's features from the quantized vectors.

    quantized (B, N, code_dim) -> Linear to D_TE -> + sin-cos positions -> pre-LN blocks -> LayerNorm
    -> Linear to D_E -> (B, N, D_E), compared with E's features by `losses.cosine_distillation_loss`.

TE exists only to train the tokenizer: it is what makes the codes carry what the teacher knows.
"""

from __future__ import annotations

import torch
from torch import nn

from bridle.model.config import ModelConfig
from bridle.model.patches import sincos_position_embedding
from bridle.model.transformer import Transformer, init_linear_and_norm


class TokenizerEstimator(nn.Module):
    pos_embed: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.estimator.dim
        self.embed = nn.Linear(cfg.quantizer.dim, dim)
        self.register_buffer("pos_embed", sincos_position_embedding(cfg.grid, dim), persistent=False)
        self.transformer = Transformer(cfg.estimator)
        self.head = nn.Linear(dim, cfg.encoder.dim)
        self.embed.apply(init_linear_and_norm)
        self.head.apply(init_linear_and_norm)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        x = self.embed(quantized) + self.pos_embed  # (B, N, D_TE)
        return self.head(self.transformer(x))  # (B, N, D_E)
