"""The two training losses of BRIDLE.

- Encoder iterations: `masked_code_loss`, the label predictor's cross-entropy against the tokenizer's
  codes at masked patches, each RQ level its own K-way softmax, averaged without weights over levels.
- Tokenizer iterations: `cosine_distillation_loss`, mean over tokens of 1 - cos(TE output, teacher
  feature); the quantizer adds its own L_cb (see `bridle.model.quantizer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_code_loss(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over levels of the cross-entropy over masked patches.

    logits (B, N, L, K), codes (B, N, L) int64 in [0, K), mask (B, N) bool with True = masked.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, N, L, K), got shape {tuple(logits.shape)}")
    B, N, L = logits.shape[:3]
    if codes.shape != (B, N, L):
        raise ValueError(f"codes must be {(B, N, L)} to match logits, got {tuple(codes.shape)}")
    if mask.shape != (B, N) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool {(B, N)}, got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("mask selects no patch: the loss would be undefined")
    masked_logits = logits[mask]  # (M, L, K)
    masked_codes = codes[mask]  # (M, L)
    per_level = [F.cross_entropy(masked_logits[:, level], masked_codes[:, level]) for level in range(L)]
    return torch.stack(per_level).mean()


def cosine_distillation_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 - cos(pred, target); pred and target (B, N, D) (any (..., D) works)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    if pred.ndim < 2:
        raise ValueError(f"expected (..., D) tokens, got shape {tuple(pred.shape)}")
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
