"""Patches: cutting the preprocessed input into a grid of patches, and fixed sin-cos positions.

Audio (B, 1, frames, mel) and images (B, 3, H, W) use square p x p patches; video (B, 3, T, H, W) uses
tubelets of `cfg.tubelet` frames x p x p. Patches are numbered row-major over `cfg.grid`. An imported AST
(`cfg.hf`) has overlapping audio patches, cut at its own stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bridle.model.config import ModelConfig


def patch_stride(cfg: ModelConfig) -> tuple[int, int]:
    """The (time, mel) or (h, w) stride between 2-D patches: the patch size, except for an imported AST,
    whose overlapping patches keep its own stride (stored as AST's (mel, time))."""
    p = cfg.patch_size
    if cfg.hf is not None and cfg.hf.family == "ast" and cfg.hf.patch_stride:
        return (cfg.hf.patch_stride[1], cfg.hf.patch_stride[0])
    return (p, p)


class PatchEmbed(nn.Module):
    """A learned linear map of each patch to `dim`: a convolution whose kernel equals its stride."""

    def __init__(self, cfg: ModelConfig, dim: int) -> None:
        super().__init__()
        p = cfg.patch_size
        if len(cfg.grid) == 3:  # (t, h, w): tubelets
            self.proj: nn.Module = nn.Conv3d(cfg.in_channels, dim, (cfg.tubelet, p, p), (cfg.tubelet, p, p))
        else:
            self.proj = nn.Conv2d(cfg.in_channels, dim, p, patch_stride(cfg))
        # Initialise like a linear layer on the flattened patch (as MAE does).
        weight = self.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, *grid) -> (B, N, D)


def patchify(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """The raw values of each patch, flattened: (B, C, [T,] H, W) -> (B, N, patch_dim)."""
    p, c = cfg.patch_size, cfg.in_channels
    b = x.shape[0]
    stride = patch_stride(cfg)
    if stride != (p, p):  # AST's overlapping patches: an identity kernel copies each window's values out
        eye = torch.eye(c * p * p, dtype=x.dtype).view(c * p * p, c, p, p)
        return F.conv2d(x, eye, stride=stride).flatten(2).transpose(1, 2)  # (B, N, patch_dim)
    if len(cfg.grid) == 3:  # (t, h, w): tubelets
        gt, gh, gw = cfg.grid
        t = cfg.tubelet
        x = x.reshape(b, c, gt, t, gh, p, gw, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, gt, gh, gw, C, t, p, p)
    else:
        gh, gw = cfg.grid
        x = x.reshape(b, c, gh, p, gw, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(b, cfg.num_patches, cfg.patch_dim)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding of integer positions (N,) -> (N, dim); dim must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_position_embedding(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """Fixed positions for a 2-D or 3-D patch grid -> (N, dim), row-major like `patchify`.

    The channels are split between the axes (even chunks, the last axis takes what is left), and each
    axis gets a 1-D sin-cos embedding of its coordinate.
    """
    n_axes = len(grid)
    chunk = (dim // n_axes) // 2 * 2
    sizes = [chunk] * (n_axes - 1) + [dim - chunk * (n_axes - 1)]
    coords = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    parts = [sincos_1d(c.reshape(-1), s) for c, s in zip(coords, sizes, strict=True)]
    return torch.cat(parts, dim=1)  # (N, dim)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
