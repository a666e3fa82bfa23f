"""Batch mixing for classifier stages: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

    mixer = BatchMixer(spec, num_classes, seed)
    x, target = mixer(x, y)      # x (B, C, H, W) preprocessed input; y (B,) labels -> target (B, K)

A mixed batch pairs each example with the example at a random permutation of the batch. mixup blends the
two inputs with weight lam ~ Beta(a, a); CutMix pastes a box of the partner covering 1 - lam of the input
(lam ~ Beta(a, a), then lam recomputed from the box as clipped at the borders). The target is the same
blend of the two one-hot labels, which `F.cross_entropy` takes as class probabilities. An unmixed batch
(probability 1 - p) gets its one-hot targets, so the loss is the plain cross-entropy. The input is the
preprocessed tensor: normalised pixels for images, the normalised fbank (1, frequency, time) for audio,
where a CutMix box is a time-frequency patch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bridle.training.recipe import MixSpec


class BatchMixer:
    def __init__(self, spec: MixSpec, num_classes: int, seed: int) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = F.one_hot(y, self.num_classes).to(torch.float32)  # (B, K)
        if self.rng.random() >= self.spec.p or len(y) < 2:
            return x, target
        order = torch.from_numpy(self.rng.permutation(len(y)))
        if self.rng.random() < self.spec.cutmix_p:
            x, lam = cutmix(
                x, x[order], float(self.rng.beta(self.spec.cutmix_alpha, self.spec.cutmix_alpha)), self.rng
            )
        else:
            lam = float(self.rng.beta(self.spec.mixup_alpha, self.spec.mixup_alpha))
            x = lam * x + (1 - lam) * x[order]
        return x, lam * target + (1 - lam) * target[order]


def cutmix(
    x: torch.Tensor, other: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """`x` with a box of `other` pasted in covering about 1 - lam of its last two axes; returns the mixed
    batch and the share of `x` actually kept."""
    h, w = x.shape[-2:]
    cut = np.sqrt(1.0 - lam)
    bh, bw = round(h * cut), round(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (h * w)
