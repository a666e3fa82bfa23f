"""What the replication measures, shared by its driver (experiments/replicate.py) and its follow-ups
(diagnose, lr_sweep): the data each modality pretrains and is probed on, and the probe scores and code
usage of one trained encoder or tokenizer."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridle.data.demo_data import build_image_digits, build_set
from bridle.model.config import preset
from experiments.probe import (
    ProbeData,
    audio_probe_data,
    code_diagnostics,
    encoder_features,
    fsdd_pretraining_clips,
    image_probe_data,
    probe_scores,
    raw_features,
)
from experiments.replication.plan import Budget
from experiments.replication.report import Records
from experiments.replication.train import Trained

IMAGE_SET = "image-digits"


def digits_set(runs: Path, budget: Budget) -> Path:
    """scikit-learn's digits as the demo image set builds them (stratified train/test split), here
    without the other image sources the demo set may add."""
    root = runs / IMAGE_SET
    params = {"seed": 0, "limit": budget.image_limit}
    build_set(root, params, lambda r: build_image_digits(r, budget.image_limit, 0))
    return root


def pretraining_source(modality: str, fsdd: Path, runs: Path, budget: Budget) -> Path:
    """What E pretrains on: audio a manifest of FSDD's training takes (unlabelled, shuffled so the fbank
    statistics see every speaker); image scikit-learn's digits, train split."""
    if modality == "image":
        return digits_set(runs, budget) / "train"
    clips = fsdd_pretraining_clips(fsdd)
    order = np.random.default_rng(0).permutation(len(clips))
    manifest = runs / "fsdd-pretraining.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([[str(clips[i].resolve())] for i in order])
    return manifest


def probe_data(modality: str, fsdd: Path, runs: Path, budget: Budget) -> ProbeData:
    cfg = preset(f"{budget.size}-{modality}")  # decoding needs only the sample rate / image size
    if modality == "audio":
        return audio_probe_data(fsdd, cfg, budget.probe)
    return image_probe_data(digits_set(runs, budget), cfg, budget.probe)


def measure_encoder(
    records: Records,
    key: dict[str, Any],
    encoder: torch.nn.Module | None,
    preprocess: torch.nn.Module,
    probes: ProbeData,
    budget: Budget,
) -> None:
    """Probe scores of one encoder (None: the raw-input control) into `records.scores`."""
    batch = budget.probe.batch_size

    def features(data: Any) -> tuple[np.ndarray, np.ndarray]:
        if encoder is None:
            return raw_features(preprocess, data, batch)
        return encoder_features(encoder, preprocess, data, batch)

    train = features(probes.train)
    test = features(probes.test) if probes.test is not None else None
    for metric, value in probe_scores(probes, train, test, budget.probe, key["seed"]).items():
        records.scores.append({**key, "metric": metric, "value": value})


def measure_tokenizer(
    records: Records,
    key: dict[str, Any],
    trained: Trained,
    teacher: torch.nn.Module,
    preprocess: torch.nn.Module,
    probes: ProbeData,
    batch: int,
) -> None:
    """Held-out and training-data code usage of one tokenizer into `records.usage`."""
    held_out = code_diagnostics(trained.tokenizer, preprocess, probes.held_out, batch, teacher)
    seen = code_diagnostics(trained.tokenizer, preprocess, probes.seen, batch)
    records.usage.append(
        {
            **key,
            "held_out": [u.usage_rate for u in held_out.usage],
            "seen": [u.usage_rate for u in seen.usage],
            "perplexity": [u.perplexity for u in held_out.usage],
            "effective_rank": held_out.effective_rank,
            "teacher_rank": held_out.teacher_rank,
        }
    )
