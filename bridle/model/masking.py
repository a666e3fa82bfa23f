"""Masking for masked prediction: which patches E does not see.

A mask is a bool tensor (B, N), True = masked, with exactly round(N * ratio) True per sample, so that
the visible patches of a batch stack into one (B, N_visible, D) tensor. On a 3-D (video) grid the mask is
a *tube*: the same spatial positions are masked at every time step.
"""

from __future__ import annotations

import math

import torch


def masked_count(n: int, ratio: float) -> int:
    return round(n * ratio)


def _random_rows(batch: int, n: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """(batch, n) bool with exactly `count` True at random places in each row."""
    noise = torch.rand(batch, n, generator=generator)  # (B, n)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each place within its row
    return ranks < count


def random_mask(
    batch: int, grid: tuple[int, ...], ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, N) bool mask, True = masked; tube masking on 3-D grids."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if len(grid) == 3:
        t, h, w = grid
        spatial = _random_rows(batch, h * w, masked_count(h * w, ratio), generator)  # (B, h*w)
        return spatial[:, None, :].expand(batch, t, h * w).reshape(batch, t * h * w)
    n = math.prod(grid)
    return _random_rows(batch, n, masked_count(n, ratio), generator)


def keep_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The tokens at unmasked places, in order: (B, N, D), (B, N) -> (B, N_visible, D)."""
    b, _, d = tokens.shape
    return tokens[~mask].reshape(b, -1, d)


def fill_masked(visible: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Put visible tokens back at their places and `mask_token` elsewhere -> (B, N, D)."""
    b, n = mask.shape
    full = mask_token.to(visible.dtype).reshape(1, 1, -1).expand(b, n, visible.shape[-1])  # bf16 autocast
    return full.masked_scatter(~mask[..., None], visible)
