"""E, the encoder: a ViT that sees only the visible patches (MAE style).

    x (B, C, [T,] H, W) -> patch embedding + fixed sin-cos positions -> (B, N, D)
                        -> drop the masked patches -> (B, N_visible, D)
                        -> prepend a learned cls token -> pre-LN blocks -> LayerNorm -> (B, 1 + N_visible, D)

Masked patches are removed before the first block, so nothing about them reaches E: the label predictor
D is what fills them in. Without a mask E runs on every patch; `features` (the teacher's targets in the
tokenizer iteration, and the service's patch embeddings) and `pooled` (the clip embedding) do that.
"""

from __future__ import annotations

import torch
from torch import nn

from bridle.model.config import ModelConfig
from bridle.model.masking import keep_visible
from bridle.model.patches import PatchEmbed, sincos_position_embedding
from bridle.model.transformer import Transformer


class Encoder(nn.Module):
    pos_embed: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder.dim
        self.dim = dim
        self.patch_embed = PatchEmbed(cfg, dim)
        self.register_buffer("pos_embed", sincos_position_embedding(cfg.grid, dim), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.transformer = Transformer(cfg.encoder)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: preprocessed input; mask (B, N) bool, True = masked -> (B, 1 + N_visible, D), cls first."""
        tokens = self.patch_embed(x) + self.pos_embed  # (B, N, D)
        if mask is not None:
            tokens = keep_visible(tokens, mask)  # (B, N_visible, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return self.transformer(torch.cat([cls, tokens], dim=1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the whole input, after the final norm, cls dropped -> (B, N, D)."""
        return self.forward(x)[:, 1:]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens -> (B, D): the embedding of a clip or an image."""
        return self.features(x).mean(dim=1)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` (B, N, D) and `pooled` (B, D) from one pass."""
        patches = self.features(x)
        return patches, patches.mean(dim=1)
