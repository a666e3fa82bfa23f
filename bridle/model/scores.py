"""Class scores from a classifier's logits (numpy, no torch): what `/classify`, the batch job and the
calibration all compute, in one place.

    softmax(logits, temperature=1.0)  (..., C) -> probabilities over the last axis, summing to 1
    sigmoid(logits)                   (..., C) -> an independent probability per label
    scores(logits, activation)        the manifest's `classifier.activation` ("softmax" or "sigmoid")
    top_k_indices(probs, k)           (..., C) -> (..., min(k, C)) label indices, the highest score first

Each computes in the dtype it is given; callers that want float64 cast first.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, shifted by the maximum so nothing overflows."""
    z = logits / temperature if temperature != 1.0 else logits
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))  # 1 / (1 + e^-x), with no overflow for large |x|


def scores(logits: np.ndarray, activation: str) -> np.ndarray:
    """(W, C) logits -> scores: "softmax" sums to 1 over the labels, "sigmoid" scores each on its own."""
    return sigmoid(logits) if activation == "sigmoid" else softmax(logits)


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """(..., C) scores -> (..., min(k, C)) the indices of the k highest along the last axis, highest first;
    equal scores in label order."""
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]
