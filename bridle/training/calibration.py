"""Calibrated scores: temperature scaling of a classifier, fitted on held-out data, stored in its weights.

A classifier trained to low loss is often over-confident: its top softmax score is higher than the rate at
which it is right. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks")
divides the logits by one scalar T > 0 fitted to minimise the negative log-likelihood on held-out data
(never the test split); the argmax, and so the accuracy, does not change.

    fit_temperature(logits, labels) -> T             (N, C) float, (N,) int -> float
    expected_calibration_error(probs, labels) -> ECE  top-label ECE over equal-width confidence bins
    calibrate_servable(servable, logits, labels)      folds 1/T into the classifier head and records it
    held_out_logits(servable, source, augment=...)    the logits to fit on, optionally under augmentation

Held-out takes of the training speakers (or fonts) can be easier than the inputs a user sends: a
temperature fitted on them sharpens the scores (audio-digits' leave-one-speaker-out folds: T 0.39-0.72)
and leaves the model over-confident on speakers it never heard (ECE 0.078). Fitted on the same held-out
examples passed through the recipe's training augmentation (`--augment RECIPE --repeats N`: N seeded
draws per example), which makes them about as hard as unseen recorders (89.1 % right against 86.8 % on
unseen speakers), T is near 1 and the ECE on unseen speakers 0.038 (models/audio-digits/README.md).

Where T lives: `softmax(W x / T + b / T)` is `softmax((W / T) x + b / T)`, so the head's last Linear layer
is rescaled in place. The exported `logits` output is then already calibrated and the service, which
applies the manifest's softmax, needs no change. The fit is recorded in the servable's provenance under
`calibration` (temperature, the data it was fitted on, NLL and ECE before and after), which
`bridle-export export` copies into the manifest's `provenance`. Calibrating an already calibrated head
composes: the recorded temperature is the product of the fits.

Softmax heads only: a sigmoid (multi-label) head has one calibration problem per label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bridle.model import scores
from bridle.model.checkpoint import Servable
from bridle.model.errors import BridleError
from bridle.model.graphs import EncoderGraph
from bridle.training.data import MediaDataset

ECE_BINS = 15
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: wide enough for any sane head, finite for the optimiser


class CalibrationError(BridleError, ValueError):
    """The model or data cannot be calibrated (no softmax head, labels that do not match, no examples)."""


# ---- the maths (numpy) ----------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities of softmax(logits / temperature), in float64."""
    return scores.softmax(np.asarray(logits, dtype=np.float64), temperature)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(label) under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature  # (N, C)
    m = z.max(axis=1, keepdims=True)
    log_norm = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))  # (N,)
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def _checked(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise CalibrationError(f"need logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if len(labels) == 0:
        raise CalibrationError("no examples to calibrate on")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise CalibrationError(f"labels must lie in 0..{logits.shape[1] - 1}")
    if not np.isfinite(logits).all():
        raise CalibrationError("logits must be finite")
    return logits, labels.astype(np.int64)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits (N, C), labels (N,)).

    One-dimensional and convex in log T for fixed logits, so a bounded scalar search finds it.
    """
    logits, labels = _checked(logits, labels)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|.

    probs (N, C) rows summing to 1, labels (N,). Bin k holds confidences in (k/bins, (k+1)/bins].
    """
    probs, labels = _checked(probs, labels)
    if bins < 1:
        raise CalibrationError(f"bins must be >= 1, got {bins}")
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)  # (N,)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (N,) bin index
    ece = 0.0
    for k in range(bins):
        in_bin = which == k
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@dataclass(frozen=True)
class CalibrationReport:
    """What one fit did, measured on the data it was fitted on (report ECE on a test set separately)."""

    temperature: float  # the product of every fit applied to this head
    fitted_temperature: float  # this fit alone
    examples: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    accuracy: float
    data: str = ""  # what it was fitted on (a path, a description)
    method: str = "temperature"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, previous: float = 1.0, data: str = ""
) -> CalibrationReport:
    logits, labels = _checked(logits, labels)
    return CalibrationReport(
        temperature=previous * temperature,
        fitted_temperature=temperature,
        examples=len(labels),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        ece_before=expected_calibration_error(softmax(logits), labels),
        ece_after=expected_calibration_error(softmax(logits, temperature), labels),
        accuracy=float(np.mean(logits.argmax(axis=1) == labels)),
        data=data,
    )


# ---- the model (torch) ----------------------------------------------------------------------------------


def output_layer(servable: Servable) -> nn.Linear:
    """The Linear layer whose output is the logits (ClassifierHead.linear, or BEATs' plain Linear)."""
    head = servable.classifier
    if head is None:
        raise CalibrationError("the model has no classifier head to calibrate")
    linear = head if isinstance(head, nn.Linear) else getattr(head, "linear", None)
    if not isinstance(linear, nn.Linear):
        raise CalibrationError(f"cannot find the output Linear layer of {type(head).__name__}")
    return linear


@torch.no_grad()
def servable_logits(servable: Servable, data: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The logits the exported graph computes (same preprocessing and pooling) for every example of
    `data` (a MediaDataset labelled in the servable's label order): ((N, C) float32, (N,) int64)."""

    if servable.classifier is None:
        raise CalibrationError("the model has no classifier head")
    graph = EncoderGraph(servable.eval()).eval()
    logits, labels = [], []
    for signal, label in DataLoader(data, batch_size):
        logits.append(graph(signal)[2].float().numpy())  # (B, C)
        labels.append(np.asarray(label, dtype=np.int64))
    return np.concatenate(logits), np.concatenate(labels)


def held_out_logits(
    servable: Servable,
    source: Any,
    split: str | None = None,
    augment: Any = None,
    repeats: int = 1,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """`servable_logits` of the labelled examples in `source` (folder or manifest), each taken `repeats`
    times through `augment` (an Augment, bridle/training/augment.py; draw r is seeded `seed + r`), or once as
    is when `augment` is None: ((N * repeats, C), (N * repeats,))."""
    if repeats < 1:
        raise CalibrationError(f"repeats must be >= 1, got {repeats}")
    if augment is None and repeats != 1:
        raise CalibrationError("repeats > 1 draws augmentations: it needs an augmentation")
    draws = [
        servable_logits(
            servable,
            MediaDataset(
                source,
                servable.config,
                labels=servable.labels,
                split=split,
                labelled=True,
                augment=augment,
                augment_seed=seed + r,
            ),
            batch_size,
        )
        for r in range(repeats)
    ]
    return np.concatenate([d[0] for d in draws]), np.concatenate([d[1] for d in draws])


def apply_temperature(servable: Servable, temperature: float) -> None:
    """Divide the output layer's weight and bias by `temperature`, in place: logits become logits / T."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"temperature must be finite and > 0, got {temperature}")
    linear = output_layer(servable)
    with torch.no_grad():
        linear.weight.div_(temperature)
        if linear.bias is not None:
            linear.bias.div_(temperature)


def calibrate_servable(
    servable: Servable, logits: np.ndarray, labels: np.ndarray, data: str = ""
) -> CalibrationReport:
    """Fit T on held-out (logits, labels) of `servable`, fold it into its head and record it in
    `servable.provenance["calibration"]`; returns the report. Softmax heads only."""
    if servable.config.classifier_activation != "softmax":
        raise CalibrationError(
            f"temperature scaling needs a softmax head, this one is {servable.config.classifier_activation}"
        )
    output_layer(servable)  # fail before fitting when there is nothing to rescale
    previous = float((servable.provenance.get("calibration") or {}).get("temperature", 1.0))
    temperature = fit_temperature(logits, labels)
    report = calibration_report(logits, labels, temperature, previous, data)
    apply_temperature(servable, temperature)
    servable.provenance["calibration"] = report.to_dict()
    return report
