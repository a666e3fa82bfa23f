"""T, the tokenizer: what turns each patch into one code per RQ level, the targets E learns to predict.

Two kinds, with the same output:

- `RandomProjectionTokenizer` (iteration 1, the cold start): a frozen random linear map of each raw
  patch, plus sin-cos positions, then a frozen random map to the code dim, then the residual quantizer,
  whose codebooks are fitted on the first training batch and then frozen. Nothing in it is learned; its
  codes only group patches that look alike.
- `Tokenizer` (iteration 2 onwards): a ViT over the full, unmasked input, Linear-Tanh-Linear down to the
  code dim, then the residual quantizer. It is trained by distillation from a trained encoder (see
  `estimator.TokenizerEstimator`), so its codes carry what the encoder learned.

    x (B, C, [T,] H, W) -> (B, N, code_dim) -> RQ -> codes (B, N, L), quantized (B, N, code_dim), L_cb

`fit_codebooks` is the one place a tokenizer's codebooks are fitted: k-means on the first batch it sees.

Mixed precision: under a bf16 `torch.autocast` the networks before the quantizer run in bf16, but the
residual quantizer (distances, code assignment, EMA statistics, k-means) always runs in fp32, with
autocast switched off around it (`quantize_fp32`): RQ picks codes by tiny differences of cosines, and in
bf16 (8 bits of mantissa) those ties flip (README, "Training at scale", measures how often).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bridle.model.config import ModelConfig
from bridle.model.patches import PatchEmbed, patchify, sincos_position_embedding
from bridle.model.quantizer import QuantizerOutput, ResidualQuantizer
from bridle.model.transformer import Transformer, init_linear_and_norm


@dataclass(frozen=True)
class TokenizerOutput:
    codes: torch.Tensor  # (B, N, L) int64
    quantized: torch.Tensor  # (B, N, code_dim), straight-through
    loss: torch.Tensor  # scalar L_cb


def quantize_fp32(quantizer: ResidualQuantizer, z: torch.Tensor) -> QuantizerOutput:
    """The quantizer on z (..., code_dim) in fp32, whatever autocast is on; gradients flow back to z."""
    with torch.autocast(z.device.type, enabled=False):
        return quantizer(z.float())


@torch.no_grad()
def fit_codebooks(tokenizer: nn.Module, x: torch.Tensor) -> None:
    """Fit `tokenizer.quantizer`'s codebooks by k-means on the vectors of batch x, unless already fitted.

    Called on the first batch of training (a trained T then moves them by EMA, the random T keeps them)
    and on a random batch for a fresh servable.
    """
    if not bool(tokenizer.quantizer.initialized.all()):
        z = tokenizer.embed(x)  # (B, N, code_dim), bf16 under autocast
        with torch.autocast(z.device.type, enabled=False):
            tokenizer.quantizer.init_codebooks(z.float())


class Tokenizer(nn.Module):
    pos_embed: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.tokenizer.dim
        self.patch_embed = PatchEmbed(cfg, dim)
        self.register_buffer("pos_embed", sincos_position_embedding(cfg.grid, dim), persistent=False)
        self.transformer = Transformer(cfg.tokenizer)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, cfg.quantizer.dim))
        self.head.apply(init_linear_and_norm)
        self.quantizer = ResidualQuantizer(cfg.quantizer)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors to quantize -> (B, N, code_dim)."""
        tokens = self.transformer(self.patch_embed(x) + self.pos_embed)  # (B, N, D_T)
        return self.head(tokens)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        out = quantize_fp32(self.quantizer, self.embed(x))
        return TokenizerOutput(codes=out.codes, quantized=out.quantized, loss=out.loss)


class RandomProjectionTokenizer(nn.Module):
    """Frozen random projections + RQ; the codebooks are fitted once, on the first training batch, and
    frozen with the rest (`bridle.Pretraining`)."""

    patch_projection: torch.Tensor
    code_projection: torch.Tensor
    pos_embed: torch.Tensor

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder.dim
        g = torch.Generator().manual_seed(seed)
        # Scaled so that a unit-variance patch maps to unit-variance features, comparable to the positions.
        patch_projection = torch.randn(cfg.patch_dim, dim, generator=g) / cfg.patch_dim**0.5
        code_projection = torch.randn(dim, cfg.quantizer.dim, generator=g) / dim**0.5
        self.register_buffer("patch_projection", patch_projection)  # (patch_dim, D)
        self.register_buffer("code_projection", code_projection)  # (D, code_dim)
        self.register_buffer("pos_embed", sincos_position_embedding(cfg.grid, dim), persistent=False)
        self.quantizer = ResidualQuantizer(cfg.quantizer)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors to quantize -> (B, N, code_dim)."""
        features = patchify(x, self.cfg) @ self.patch_projection + self.pos_embed  # (B, N, D)
        return features @ self.code_projection

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        out = quantize_fp32(self.quantizer, self.embed(x))
        return TokenizerOutput(codes=out.codes, quantized=out.quantized, loss=out.loss)
