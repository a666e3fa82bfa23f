"""Held-out evaluation of a frozen encoder and tokenizer (the replication's measurements).

    linear probe   pooled features of the frozen encoder E on a probe-train split -> a linear head
                   (logistic regression, full batch, a fixed number of steps) -> probe-test accuracy
    code usage     the frozen tokenizer's per-level usage rate and perplexity over held-out inputs

The probe tasks are harder than the demo data's own labels (which every variant nearly saturates):
    audio   speaker (voice) identification: each training voice's clips split alternately into
            probe-train / probe-test, so the test clips are unseen clips of known voices
    image   digit classification under strong additive Gaussian pixel noise (train and test alike)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bridle_model.config import ModelConfig
from bridle_model.quantizer import LevelUsage, ResidualQuantizer
from training.data import Entry, MediaDataset, split_by_metadata

METADATA = "metadata.csv"


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = 300  # full-batch optimisation steps of the linear head
    lr: float = 0.05
    weight_decay: float = 1e-4
    batch_size: int = 64  # feature extraction
    image_noise_std: float = 0.6  # image probe: Gaussian pixel noise, in units of the 0..255 range
    max_examples: int | None = None  # cap per probe split (micro budget)


@dataclass(frozen=True)
class ProbeSplits:
    task: str  # what is predicted, for the report
    train: MediaDataset
    test: MediaDataset
    noise_std: float  # 0: clean inputs


def probe_splits(data_dir: Path, cfg: ModelConfig, probe: ProbeConfig) -> ProbeSplits:
    """The probe-train and probe-test sets of one demo data folder (see the module docstring)."""
    metadata = Path(data_dir) / METADATA
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} is missing: build the demo data (python -m training.demo_data)")
    if cfg.modality == "audio":
        by_voice: dict[str, list[Entry]] = defaultdict(list)
        for entry in split_by_metadata(metadata, "voice")["train"]:
            by_voice[str(entry.label)].append(entry)
        train = [e for clips in by_voice.values() for e in clips[0::2]]
        test = [e for clips in by_voice.values() for e in clips[1::2]]
        task, noise = "voice identification (held-out clips of training voices)", 0.0
    elif cfg.modality == "image":
        splits = split_by_metadata(metadata, "label")
        train, test = splits["train"], splits["test"]
        task, noise = f"digit under Gaussian noise (std {probe.image_noise_std:g})", probe.image_noise_std
    else:
        raise ValueError(f"no probe task for modality {cfg.modality!r} (audio and image only)")
    train, test = _capped(train, probe.max_examples), _capped(test, probe.max_examples)
    train_set = MediaDataset(train, cfg, cache=True)
    test_set = MediaDataset(test, cfg, labels=train_set.labels, cache=True)
    return ProbeSplits(task, train_set, test_set, noise)


def _capped(entries: list[Entry], n: int | None) -> list[Entry]:
    if n is None or len(entries) <= n:
        return entries
    step = len(entries) / n  # spread over the (label-sorted) list
    return [entries[int(i * step)] for i in range(n)]


def corrupt(signal: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise on uint8 images (B, 3, S, S): std in units of the full 0..255 range."""
    if noise_std == 0:
        return signal
    noise = torch.randn(signal.shape, generator=generator) * (255.0 * noise_std)
    return (signal.float() + noise).clamp(0, 255).to(signal.dtype)


@torch.no_grad()
def pooled_features(
    encoder: nn.Module, preprocess: nn.Module, data: MediaDataset, batch: int, noise_std: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """E.pooled over the data set -> features (n, D), labels (n,)."""
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for signal, label in DataLoader(data, batch):
        x = preprocess(corrupt(signal, noise_std, generator))
        feats.append(encoder.pooled(x))  # (B, D)
        labels.append(label)
    return torch.cat(feats), torch.cat(labels)


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    probe: ProbeConfig,
    seed: int,
) -> float:
    """Logistic regression on standardised features; top-1 accuracy on the test features."""
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(seed)
    head = nn.Linear(x_train.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=probe.lr, weight_decay=probe.weight_decay)
    for _ in range(probe.steps):
        loss = F.cross_entropy(head(x_train), y_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(x_test).argmax(-1) == y_test).float().mean())


@torch.no_grad()
def held_out_usage(
    tokenizer: nn.Module, preprocess: nn.Module, data: MediaDataset, batch: int
) -> list[LevelUsage]:
    """Per-level code usage of the frozen tokenizer over `data` (its codebooks are not updated)."""
    tokenizer.eval()
    rqs = [m for m in tokenizer.modules() if isinstance(m, ResidualQuantizer)]
    if not rqs:
        raise ValueError("the tokenizer has no ResidualQuantizer to measure")
    for q in rqs:
        q.freeze()
        q.reset_usage()
    for signal, _ in DataLoader(data, batch):
        tokenizer(preprocess(signal))
    return [u for q in rqs for u in q.usage()]
