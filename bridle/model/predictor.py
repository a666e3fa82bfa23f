"""D, the label predictor: fills the masked places with a learned mask token and predicts their codes.

    E's output (B, 1 + N_visible, D_E) -> Linear to D_D -> scatter the visible tokens back to their places,
    mask token elsewhere -> + sin-cos positions -> pre-LN blocks -> LayerNorm
    -> Linear to L x K -> logits (B, N, L, K), one K-way distribution per RQ level.

The logits cover every patch; the loss (`losses.masked_code_loss`) reads only the masked ones.
"""

from __future__ import annotations

import torch
from torch import nn

from bridle.model.config import ModelConfig
from bridle.model.masking import fill_masked
from bridle.model.patches import sincos_position_embedding
from bridle.model.transformer import Transformer, init_linear_and_norm


class LabelPredictor(nn.Module):
    pos_embed: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.predictor.dim
        self.levels, self.codebook_size = cfg.quantizer.levels, cfg.quantizer.codebook_size
        self.embed = nn.Linear(cfg.encoder.dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_position_embedding(cfg.grid, dim), persistent=False)
        self.transformer = Transformer(cfg.predictor)
        self.head = nn.Linear(dim, self.levels * self.codebook_size)
        self.embed.apply(init_linear_and_norm)
        self.head.apply(init_linear_and_norm)

    def forward(self, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """encoded (B, 1 + N_visible, D_E), mask (B, N) True = masked -> logits (B, N, L, K)."""
        x = self.embed(encoded)  # (B, 1 + N_visible, D_D)
        cls, visible = x[:, :1], x[:, 1:]
        full = fill_masked(visible, mask, self.mask_token) + self.pos_embed  # (B, N, D_D)
        x = self.transformer(torch.cat([cls, full], dim=1))[:, 1:]  # (B, N, D_D)
        b, n, _ = x.shape
        return self.head(x).reshape(b, n, self.levels, self.codebook_size)
