"""Residual quantizer (RQ): L levels of K codewords, EMA-updated, spherical-k-means-initialised.

Level l quantizes the residual left by the levels before it:

    r_1 = z,   idx_l = argmax_k cos(r_l, w_{l,k}),   q_l = w_{l, idx_l},   r_{l+1} = r_l - q_l
    output = z + sg(sum_l q_l - z)          (straight-through: the input's gradient passes unchanged)

The codeword is chosen by the direction of the residual (the nearest codeword to the L2-normalised
residual among L2-normalised codewords, as BEATs and BRIDLE do), but each codeword keeps the *scale* of
the residuals it stands for: k-means init, EMA and restarts all average the raw residuals assigned to a
code, not their unit versions. Why: with unit codewords, level 2 onwards would subtract a unit vector
from a residual that is already much shorter than 1, and the residual would grow level by level instead
of shrinking. Averaging raw residuals makes each level a (spherically assigned) k-means step on that
level's residuals, so on the data it was fitted on, sum ||r_{l+1}||^2 = sum ||r_l||^2 - sum_k n_k
||w_k||^2 <= sum ||r_l||^2: the residual shrinks level by level. Like BRIDLE (unlike BEATs), codewords
are not re-normalised after an EMA step.

The single-codebook VQ baseline is this class with `levels=1`.

Codebooks are fitted by spherical k-means in `init_codebooks(z)` (with `init="kmeans"`, the default;
`tokenizer.fit_codebooks` calls it on a tokenizer's first batch) and refuse to run before. EMA updates
and dead-code restarts happen only in `train()` mode and before `freeze()`.
Under `torch.distributed` the per-code counts and sums are all-reduced before every EMA step, and every
codebook that one rank fits or re-seeds from its own data is broadcast from rank 0, so all ranks hold
the same codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bridle.model.config import QuantizerConfig


@dataclass(frozen=True)
class QuantizerOutput:
    quantized: torch.Tensor  # (..., dim), straight-through
    codes: torch.Tensor  # (..., L) int64
    loss: torch.Tensor  # scalar L_cb


@dataclass(frozen=True)
class LevelUsage:
    """Code utilisation of one level over the vectors seen since the last `reset_usage()`."""

    usage_rate: float  # used codes / K (CUR)
    entropy_bits: float  # entropy of the code histogram, in bits
    perplexity: float  # 2 ** entropy_bits: the effective number of codes


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_tracing() -> bool:
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def _sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """`n` random rows of x (N, D): without replacement when N >= n."""
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0], device=x.device)[:n]
    else:
        idx = torch.randint(0, x.shape[0], (n,), device=x.device)
    return x[idx]


def _nearest_code(r: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the codeword nearest to the normalised residual r (N, D) on the sphere -> (N,) int64.

    argmax_k <r/|r|, w_k/|w_k|> = argmax_k <r, w_k/|w_k|>: normalising r only scales each row, so it is
    skipped.
    """
    directions = F.normalize(codebook, dim=-1).to(r.dtype)  # (K, D)
    return (r @ directions.t()).argmax(dim=-1)  # (N,)


# Codes closer than this in direction (2.6 degrees) count as one (see `_restart_dead_codes`).
DUPLICATE_COSINE = 1 - 1e-3


def _duplicates(codebook: torch.Tensor) -> torch.Tensor:
    """(K,) bool: codes whose direction repeats a lower-numbered code's."""
    u = F.normalize(codebook, dim=-1)
    similar = torch.triu(u @ u.t() > DUPLICATE_COSINE, diagonal=1)  # (K, K), [i, j] for i < j
    return similar.any(dim=0)


def _farthest_residuals(r: torch.Tensor, book: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows of r (N, D), farthest-first in angle from `book` (K', D) and from each other -> (n, D).

    Greedy: take the residual whose best cosine to the codes so far is lowest, add it to the codes, repeat.
    """
    directions = F.normalize(r.float(), dim=-1)  # (N, D)
    if book.shape[0]:
        best = (directions @ F.normalize(book.float(), dim=-1).t()).max(dim=-1).values  # (N,)
    else:
        best = torch.full((r.shape[0],), -1.0, device=r.device)
    picks = []
    for _ in range(n):
        i = best.argmin()
        picks.append(i)
        best = torch.maximum(best, directions @ directions[i])
    return r[torch.stack(picks)].to(book.dtype)


def spherical_kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """k centroids of x (N, D): assignments by cosine, centroids = raw means of their members -> (k, D).

    Clusters that fall empty are re-seeded from random points, so every centroid stands for some data.
    """
    unit = F.normalize(x, dim=-1)  # (N, D)
    directions = _sample_rows(unit, k)  # (k, D)
    for _ in range(iters):
        assign = (unit @ directions.t()).argmax(dim=-1)  # (N,)
        sums = torch.zeros_like(directions).index_add_(0, assign, unit)  # (k, D)
        counts = torch.bincount(assign, minlength=k)  # (k,)
        empty = counts == 0
        directions = torch.where(empty[:, None], _sample_rows(unit, k), F.normalize(sums, dim=-1))
    assign = (unit @ directions.t()).argmax(dim=-1)
    sums = torch.zeros_like(directions).index_add_(0, assign, x)
    counts = torch.bincount(assign, minlength=k)
    means = sums / counts.clamp(min=1)[:, None]
    return torch.where((counts == 0)[:, None], _sample_rows(x, k), means)


class ResidualQuantizer(nn.Module):
    """`forward(z (..., dim)) -> QuantizerOutput`; `encode` / `decode`; `usage()`; `freeze()`."""

    codebooks: torch.Tensor
    initialized: torch.Tensor
    frozen: torch.Tensor
    unused_steps: torch.Tensor
    usage_counts: torch.Tensor

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        L, K, D = cfg.levels, cfg.codebook_size, cfg.dim
        if cfg.init == "random":
            codebooks, initialized = (
                F.normalize(torch.randn(L, K, D), dim=-1),
                torch.ones(L, dtype=torch.bool),
            )
        else:  # k-means on the first training batch
            codebooks, initialized = torch.zeros(L, K, D), torch.zeros(L, dtype=torch.bool)
        self.register_buffer("codebooks", codebooks)  # (L, K, D)
        self.register_buffer("initialized", initialized)  # (L,) per level
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("unused_steps", torch.zeros(L, K, dtype=torch.long))  # updates without use
        self.register_buffer("usage_counts", torch.zeros(L, K, dtype=torch.long), persistent=False)

    # ---- public API -----------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = self._flatten(z)  # (N, D)
        updating = self.training and not bool(self.frozen)
        if not _is_tracing() and not bool(self.initialized.all()):
            raise RuntimeError("codebooks are not initialised: fit them first with init_codebooks(z)")

        r = flat
        quantized = torch.zeros_like(flat)  # (N, D) sum of chosen codewords
        codes, residuals, losses = [], [], []
        for level in range(self.cfg.levels):
            idx = _nearest_code(r.detach(), self.codebooks[level])  # (N,)
            q = self.codebooks[level].to(r.dtype)[idx]  # (N, D), no gradient (buffer)
            losses.append(F.mse_loss(q, r.detach()) + self.cfg.beta * F.mse_loss(r, q.detach()))
            codes.append(idx)
            residuals.append(r.detach())
            quantized = quantized + q
            r = r - q

        codes_t = torch.stack(codes, dim=-1)  # (N, L)
        if not _is_tracing():
            self._count_usage(codes_t)
        if updating:
            for level in range(self.cfg.levels):
                self._ema_update(level, residuals[level], codes[level])

        out = flat + (quantized - flat).detach()  # straight-through
        return QuantizerOutput(
            quantized=out.reshape(z.shape),
            codes=codes_t.reshape(*z.shape[:-1], self.cfg.levels),
            loss=torch.stack(losses).mean(),
        )

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes of z (..., dim) -> (..., L) int64, with no update and no usage counting."""
        r = self._flatten(z)
        codes = []
        for level in range(self.cfg.levels):
            idx = _nearest_code(r, self.codebooks[level])
            codes.append(idx)
            r = r - self.codebooks[level].to(r.dtype)[idx]
        return torch.stack(codes, dim=-1).reshape(*z.shape[:-1], self.cfg.levels)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen codewords: codes (..., L) int64 -> (..., dim)."""
        L, K, D = self.codebooks.shape
        if codes.shape[-1] != L:
            raise ValueError(f"codes must end in {L} levels, got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if not _is_tracing() and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must lie in [0, {K}), got [{int(codes.min())}, {int(codes.max())}]")
        offsets = torch.arange(L, device=codes.device) * K  # level l's codes live at l*K .. l*K + K-1
        return F.embedding(codes.long() + offsets, self.codebooks.reshape(L * K, D)).sum(dim=-2)

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor) -> None:
        """Spherical k-means on z (..., dim), level by level on the residuals, even if already fitted.

        Under torch.distributed every level is broadcast from rank 0, so all ranks hold the same books.
        """
        r = self._flatten(z).detach()
        for level in range(self.cfg.levels):
            self.codebooks[level] = spherical_kmeans(r.float(), self.cfg.codebook_size, self.cfg.kmeans_iters)
            if _distributed():
                dist.broadcast(self.codebooks[level], src=0)
            self.initialized[level] = True
            self.unused_steps[level].zero_()
            r = r - self.codebooks[level][_nearest_code(r, self.codebooks[level])]

    def freeze(self) -> None:
        """No more k-means, EMA or restarts, in any mode."""
        self.frozen.fill_(True)

    def usage(self) -> list[LevelUsage]:
        """Per-level utilisation of the codes assigned since the last `reset_usage()`."""
        result = []
        for counts in self.usage_counts.double():  # (K,) per level
            total = float(counts.sum())
            if total == 0:
                result.append(LevelUsage(usage_rate=0.0, entropy_bits=0.0, perplexity=1.0))
                continue
            p = counts[counts > 0] / total
            entropy = float(-(p * torch.log2(p)).sum())
            rate = float((counts > 0).sum()) / counts.numel()
            result.append(LevelUsage(usage_rate=rate, entropy_bits=entropy, perplexity=2.0**entropy))
        return result

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    # ---- updates ----------------------------------------------------------------------------
    @torch.no_grad()
    def _ema_update(self, level: int, r: torch.Tensor, idx: torch.Tensor) -> None:
        """w <- decay * w + (1 - decay) * mean of assigned residuals, for codes used in this batch."""
        K = self.cfg.codebook_size
        r = r.float()  # (N, D)
        counts = torch.bincount(idx, minlength=K).float()  # (K,)
        sums = torch.zeros(K, r.shape[1], device=r.device).index_add_(0, idx, r)  # (K, D)
        if _distributed():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        used = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        book = self.codebooks[level]
        decay = self.cfg.decay
        book.copy_(torch.where(used[:, None], decay * book + (1 - decay) * means, book))
        self._restart_dead_codes(level, r, used)

    @torch.no_grad()
    def _restart_dead_codes(self, level: int, r: torch.Tensor, used: torch.Tensor) -> None:
        """Re-seed dead codes from this batch's worst-served residuals.

        A code is dead when it was unused for `dead_code_steps` updates in a row, or when it points the
        same way as a lower-numbered code (cosine > `DUPLICATE_COSINE`): codes are chosen by direction, so
        such a pair cannot be told apart, and which one wins comes down to rounding (a model whose codes
        flip between PyTorch and ONNX Runtime). New codewords are the batch residuals the live codes serve
        worst, picked farthest-first (`_farthest_residuals`), not at random: a batch full of near-identical
        vectors (silence, flat background) would otherwise seed the same vector into many codes at once.
        """
        steps = self.unused_steps[level]
        steps.copy_(torch.where(used, torch.zeros_like(steps), steps + 1))
        if self.cfg.dead_code_steps == 0:
            return
        book = self.codebooks[level]
        dead = (steps >= self.cfg.dead_code_steps) | _duplicates(book)  # same on every rank
        if not bool(dead.any()):
            return
        book[dead] = _farthest_residuals(r, book[~dead], int(dead.sum()))
        if _distributed():
            dist.broadcast(book, src=0)
        steps.masked_fill_(dead, 0)

    @torch.no_grad()
    def _count_usage(self, codes: torch.Tensor) -> None:
        L, K = self.usage_counts.shape
        offsets = torch.arange(L, device=codes.device) * K
        flat = (codes + offsets).reshape(-1)
        self.usage_counts += torch.bincount(flat, minlength=L * K).reshape(L, K)

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim < 1 or z.shape[-1] != self.cfg.dim:
            raise ValueError(f"expected input (..., {self.cfg.dim}), got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"expected a floating-point input, got {z.dtype}")
        return z.reshape(-1, self.cfg.dim)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"levels={c.levels}, codebook_size={c.codebook_size}, dim={c.dim}, init={c.init}"


def _check_config(cfg: QuantizerConfig) -> None:
    problems = []
    if cfg.levels < 1:
        problems.append(f"levels must be >= 1, got {cfg.levels}")
    if cfg.codebook_size < 1:
        problems.append(f"codebook_size must be >= 1, got {cfg.codebook_size}")
    if cfg.dim < 1:
        problems.append(f"dim must be >= 1, got {cfg.dim}")
    if not 0.0 <= cfg.decay < 1.0:
        problems.append(f"decay must be in [0, 1), got {cfg.decay}")
    if cfg.beta < 0 or not math.isfinite(cfg.beta):
        problems.append(f"beta must be a finite value >= 0, got {cfg.beta}")
    if cfg.init not in ("kmeans", "random"):
        problems.append(f"init must be 'kmeans' or 'random', got {cfg.init!r}")
    if cfg.kmeans_iters < 0:
        problems.append(f"kmeans_iters must be >= 0, got {cfg.kmeans_iters}")
    if cfg.dead_code_steps < 0:
        problems.append(f"dead_code_steps must be >= 0 (0 = never), got {cfg.dead_code_steps}")
    if problems:
        raise ValueError("bad QuantizerConfig: " + "; ".join(problems))
