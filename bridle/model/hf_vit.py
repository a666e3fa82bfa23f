"""One parametrised pre-LN ViT for the Hugging Face image, video and audio encoders `bridle/importers/hf.py`
imports.

ViT, DeiT, BEiT, DINOv2, VideoMAE and AST are all the same network with a few options
(`config.HFBackboneConfig`):

    input -> patch conv (2-D p x p, stride p or AST's overlapping stride; 3-D tubelets for VideoMAE)
          -> prefix tokens (cls; DeiT and AST add a distillation token; VideoMAE none)
          -> + absolute positions (learned; VideoMAE's fixed 1-D sinusoid table; BEiT usually none)
          -> pre-LN blocks: x + s1 * Attn(LN(x), bias), x + s2 * MLP(LN(x))
             (s1, s2: DINOv2 / BEiT layer scale, else 1; bias: BEiT's relative position bias, else none)
          -> final LayerNorm (not for mean-pooling BEiT and VideoMAE)
          -> pooled: cls | cls beside the distillation token | their mean (AST)
                     | cls beside the patch mean (DINOv2) | the patch mean [-> LayerNorm] (VideoMAE, BEiT)

The pooled vector is exactly what the model's Hugging Face classification head reads, so `logits` =
head(pooled); the head is a Linear (AST's: LayerNorm + Linear). The input size is fixed at import, so
everything Hugging Face computes from it at run time (DINOv2's interpolated positions, BEiT's bias index)
is computed once by the importer and stored as plain tensors: the exported graph has no interpolation.

An encoder exposes what every bridle encoder does: `features(x) -> (B, N, D)` (the patch tokens, after the
final norm where the model has one), `pooled(x) -> (B, E)` (the embedding) and `outputs(x)` (both from one
pass). AST reads its fbank as (mel, time) and numbers its patches mel-major; `features` returns them
time-major, so the patch grid is (time, mel) like every bridle audio model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bridle.model.beats import BeatsAttention
from bridle.model.config import HFBackboneConfig, ModelConfig


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table -> (positions, dim): angle pos / 10000^(2 (j // 2) / dim), sin on even j,
    cos on odd j, computed in float64 as Hugging Face does, then float32."""
    j = np.arange(dim)
    angles = np.arange(positions)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]  # (P, dim)
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).float()


class HFBlock(nn.Module):
    """x + s1 * Attn(LN(x), bias), then x + s2 * MLP(LN(x)); s1, s2 per-channel when layer scale is on."""

    def __init__(self, dim: int, heads: int, hidden: int, hf: HFBackboneConfig, tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=hf.layer_norm_eps)
        self.attn = BeatsAttention(dim, heads, gated=False)
        self.norm2 = nn.LayerNorm(dim, eps=hf.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.scale1 = nn.Parameter(torch.ones(dim)) if hf.layer_scale else None
        self.scale2 = nn.Parameter(torch.ones(dim)) if hf.layer_scale else None
        # BEiT: this layer's relative position bias, expanded to (heads, tokens, tokens) by the importer
        self.bias = (
            nn.Parameter(torch.zeros(heads, tokens, tokens)) if hf.relative_position == "layer" else None
        )

    def forward(self, x: torch.Tensor, shared_bias: torch.Tensor | None) -> torch.Tensor:
        bias = self.bias if self.bias is not None else shared_bias
        a = self.attn(self.norm1(x), bias)  # (B, T, D)
        x = x + (a * self.scale1 if self.scale1 is not None else a)
        m = self.mlp(self.norm2(x))
        return x + (m * self.scale2 if self.scale2 is not None else m)


class HFEncoder(nn.Module):
    """E of an imported Hugging Face ViT-family model (see the module docstring)."""

    pos_embed: torch.Tensor | None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.hf is None:
            raise ValueError("an HFEncoder needs a config with `hf` set")
        hf, vit = cfg.hf, cfg.encoder
        self.cfg, self.hf, self.dim = cfg, hf, vit.dim
        p = cfg.patch_size
        if len(cfg.grid) == 3:  # VideoMAE's (t, h, w) tubelets
            kernel: tuple[int, ...] = (cfg.tubelet, p, p)
            self.patch_embed: nn.Module = nn.Conv3d(3, vit.dim, kernel, hf.patch_stride or kernel)
        else:
            self.patch_embed = nn.Conv2d(cfg.in_channels, vit.dim, p, hf.patch_stride or p)
        self.prefix = nn.Parameter(torch.zeros(1, hf.prefix_tokens, vit.dim)) if hf.prefix_tokens else None
        tokens = hf.prefix_tokens + cfg.num_patches
        if hf.position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, vit.dim))
        elif hf.position == "sincos":
            self.register_buffer("pos_embed", sinusoid_table(tokens, vit.dim)[None], persistent=False)
        else:
            self.pos_embed = None
        self.shared_bias = (
            nn.Parameter(torch.zeros(vit.heads, tokens, tokens)) if hf.relative_position == "shared" else None
        )
        hidden = int(vit.dim * vit.mlp_ratio)
        self.blocks = nn.ModuleList(HFBlock(vit.dim, vit.heads, hidden, hf, tokens) for _ in range(vit.depth))
        self.norm = nn.LayerNorm(vit.dim, eps=hf.layer_norm_eps) if hf.final_norm else nn.Identity()
        self.pool_norm = nn.LayerNorm(vit.dim, eps=hf.pool_norm_eps) if hf.pool_norm else nn.Identity()
        self.mel_major = hf.family == "ast"
        if self.mel_major:  # AST's patches come mel-major: the index of each in time-major order
            t, f = hf.grid
            order = torch.arange(t * f).view(f, t).t().reshape(-1)  # (N,)
            self.register_buffer("time_major", order, persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.dim * self.hf.embedding_factor

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> every output token, prefix tokens first -> (B, P + N, D)."""
        if self.mel_major:
            x = x.transpose(2, 3)  # (B, 1, frames, mel) -> (B, 1, mel, frames), as AST reads it
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if self.prefix is not None:
            tokens = torch.cat([self.prefix.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, P + N, D)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens, self.shared_bias)
        return self.norm(tokens)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features (B, N, D) and the embedding the classifier reads (B, E), from one pass."""
        seq = self.sequence(x)  # (B, P + N, D)
        patches = seq[:, self.hf.prefix_tokens :]  # (B, N, D)
        pooling = self.hf.pooling
        if pooling == "cls":
            pooled = seq[:, 0]
        elif pooling == "concat":
            pooled = torch.cat([seq[:, 0], seq[:, 1]], dim=-1)
        elif pooling == "two_mean":
            pooled = (seq[:, 0] + seq[:, 1]) / 2
        elif pooling == "cls_mean":
            pooled = torch.cat([seq[:, 0], patches.mean(dim=1)], dim=-1)
        else:
            pooled = self.pool_norm(patches.mean(dim=1))
        if self.mel_major:
            patches = patches[:, self.time_major]
        return patches, pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens -> (B, N, D), row-major over `cfg.grid`."""
        return self.outputs(x)[0]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding the model's classification head reads -> (B, E)."""
        return self.outputs(x)[1]


def build_hf_head(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The classification head on the pooled embedding: a Linear, or LayerNorm + Linear (AST)."""
    if cfg.hf is None:
        raise ValueError("build_hf_head needs a config with `hf` set")
    width = cfg.encoder.dim * cfg.hf.embedding_factor
    linear = nn.Linear(width, num_classes)
    if cfg.hf.head_norm:
        return nn.Sequential(nn.LayerNorm(width, eps=cfg.hf.layer_norm_eps), linear)
    return linear
