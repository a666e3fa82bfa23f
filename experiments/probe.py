"""Held-out measurements of frozen encoders and tokenizers (the replication's probes).

Features (one vector per example, the encoder and everything before it frozen):
    encoder_features   E.pooled: the mean of E's patch tokens -> (n, D)
    raw_features       the control without any network: audio log-mel statistics (mean and std over time of
                       each mel bin of the model's normalised fbank) -> (n, 2 F); image pixels of the model's
                       normalised input -> (n, 3 S S)

Probes (scikit-learn, fixed hyper-parameters for every variant: nothing is tuned per variant):
    audio  digit recognition on real speech (FSDD), leave-one-speaker-out: a logistic regression on
           standardised features trained on every clip of all speakers but one, tested on the held-out
           speaker's clips; the accuracy is the mean over the held-out speakers
    image  few-label probes on clean digits: a logistic regression on `n` labelled training images per
           class (n in `label_budgets`), and a k-NN classifier (cosine) on `knn_labels` per class; each is
           the mean over `draws` random label draws, the same draws for every variant of a seed

Code usage: the frozen tokenizer's per-level usage rate and perplexity over a set of inputs, and the
effective rank of the vectors it quantizes (`code_diagnostics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from bridle.data.fsdd import fsdd_clips
from bridle.model.config import ModelConfig
from bridle.model.media_sets import Entry, split_by_metadata
from bridle.model.quantizer import LevelUsage, ResidualQuantizer
from bridle.training.data import MediaDataset

METADATA = "metadata.csv"
T = TypeVar("T")


@dataclass(frozen=True)
class ProbeConfig:
    label_budgets: tuple[int, ...] = (5, 10)  # image: labelled training images per class (linear probe)
    knn_labels: int = 10  # image: labelled training images per class for k-NN
    knn_k: int = 5
    draws: int = 20  # image: random label draws per seed, averaged
    logistic_c: float = 1.0  # inverse L2 strength of every logistic-regression probe
    batch_size: int = 64  # feature extraction
    max_per_class: int | None = None  # cap per (speaker, digit) or per image class (micro budget)

    def metrics(self, modality: str) -> list[str]:
        """The probe columns of one modality, in report order."""
        if modality == "audio":
            return ["digit-loso"]
        return [*(f"linear@{n}" for n in self.label_budgets), f"knn@{self.knn_labels}"]


@dataclass(frozen=True)
class ProbeData:
    """The examples one modality's probes and usage measurements read."""

    modality: str
    train: MediaDataset  # audio: every clip (leave-one-speaker-out); image: where labels are drawn from
    test: MediaDataset | None  # image: the held-out test split; audio: None
    groups: np.ndarray | None  # audio: the speaker of each `train` clip
    seen: MediaDataset  # code usage on inputs of the pretraining data ...
    held_out: MediaDataset  # ... and on as many inputs it never saw


FSDD_TEST_INDEX = 5  # FSDD's own split: takes 0-4 of every (speaker, digit) are its test set


def fsdd_pretraining_clips(fsdd_root: Path) -> list[Path]:
    """The FSDD clips self-supervised pretraining may see (unlabelled): FSDD's training takes (index >= 5)."""
    return [c.path for c in fsdd_clips(fsdd_root) if c.index >= FSDD_TEST_INDEX]


def audio_probe_data(fsdd_root: Path, cfg: ModelConfig, probe: ProbeConfig) -> ProbeData:
    """Every FSDD clip under `fsdd_root`, labelled by digit word, with its speaker; code usage on FSDD's
    test takes (never pretrained on) and on the first as many training takes."""
    clips = _capped(fsdd_clips(fsdd_root), lambda c: (c.speaker, c.digit), probe.max_per_class)
    speakers = sorted({c.speaker for c in clips})
    if len(speakers) < 2:
        raise ValueError(f"leave-one-speaker-out needs >= 2 speakers; {fsdd_root} has {speakers}")
    data = MediaDataset([Entry(c.path, c.word) for c in clips], cfg, cache=True)
    by_path = {c.path: c.speaker for c in clips}
    groups = np.array([by_path[e.path] for e in data.entries])  # decodable clips only
    test_takes = [c for c in clips if c.index < FSDD_TEST_INDEX]
    if not test_takes:
        raise ValueError(
            f"{fsdd_root} has no FSDD test takes (index < {FSDD_TEST_INDEX}) to measure usage on"
        )
    train_takes = [c for c in clips if c.index >= FSDD_TEST_INDEX][: len(test_takes)]
    seen = MediaDataset([Entry(c.path, c.word) for c in train_takes], cfg, cache=True)
    held_out = MediaDataset([Entry(c.path, c.word) for c in test_takes], cfg, cache=True)
    return ProbeData("audio", data, None, groups, seen, held_out)


def image_probe_data(data_dir: Path, cfg: ModelConfig, probe: ProbeConfig) -> ProbeData:
    """The demo image set's train split (where labels are drawn from) and its test split, clean; code
    usage on the test split and on as many training images."""
    metadata = Path(data_dir) / METADATA
    if not metadata.is_file():
        raise FileNotFoundError(
            f"{metadata} is missing: build the demo data (python -m bridle.data.demo_data)"
        )
    splits = split_by_metadata(metadata, "label")
    train = _capped(splits["train"], lambda e: e.label, probe.max_per_class)
    test = _capped(splits["test"], lambda e: e.label, probe.max_per_class)
    train_set = MediaDataset(train, cfg, cache=True)
    test_set = MediaDataset(test, cfg, labels=train_set.labels, cache=True)
    seen = MediaDataset(train[:: max(1, len(train) // len(test))][: len(test)], cfg, labels=train_set.labels)
    return ProbeData("image", train_set, test_set, None, seen, test_set)


def _capped(items: list[T], key: Callable[[T], Hashable], n: int | None) -> list[T]:
    """The first `n` items of every key (all items when n is None)."""
    if n is None:
        return items
    counts: Counter[Hashable] = Counter()
    kept = []
    for item in items:
        if counts[key(item)] < n:
            counts[key(item)] += 1
            kept.append(item)
    return kept


# ---- features ---------------------------------------------------------------------------------------------


@torch.no_grad()
def encoder_features(
    encoder: nn.Module, preprocess: nn.Module, data: MediaDataset, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """E.pooled over the data set -> features (n, D), labels (n,)."""
    encoder.eval()
    feats, labels = [], []
    for signal, label in DataLoader(data, batch):
        feats.append(encoder.pooled(preprocess(signal)))  # (B, D)
        labels.append(label)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def raw_features(preprocess: nn.Module, data: MediaDataset, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The no-network control: log-mel statistics (audio) or pixels (image) -> (n, F), labels (n,)."""
    feats, labels = [], []
    for signal, label in DataLoader(data, batch):
        x = preprocess(signal)  # audio (B, 1, T, F); image (B, 3, S, S)
        if data.cfg.modality == "audio":
            x = torch.cat([x.mean(dim=2), x.std(dim=2)], dim=-1)  # (B, 1, 2F): per mel bin over time
        feats.append(x.flatten(1))
        labels.append(label)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


# ---- probes -----------------------------------------------------------------------------------------------


def _logistic(c: float) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def loso_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> float:
    """Mean over speakers of the accuracy on that speaker's clips, trained on all the other speakers'."""
    accuracies = []
    for held_out in sorted(set(groups.tolist())):
        test = groups == held_out
        model = _logistic(c).fit(x[~test], y[~test])
        accuracies.append(float(model.score(x[test], y[test])))
    return float(np.mean(accuracies))


def label_draws(y: np.ndarray, per_class: int, draws: int, seed: int) -> list[np.ndarray]:
    """`draws` index sets of `per_class` examples of every class of y (fewer where a class has fewer)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    return [
        np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per_class] for k in classes])
        for _ in range(draws)
    ]


def few_label_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    draws: Sequence[np.ndarray],
    make: Callable[[], Any],
) -> float:
    """Mean test accuracy of `make()` fitted on each draw of labelled training examples."""
    (x, y), (x_test, y_test) = train, test
    return float(np.mean([make().fit(x[idx], y[idx]).score(x_test, y_test) for idx in draws]))


def probe_scores(
    data: ProbeData,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    probe: ProbeConfig,
    seed: int,
) -> dict[str, float]:
    """Every probe metric of one modality (`ProbeConfig.metrics`) on precomputed features."""
    if data.modality == "audio":
        assert data.groups is not None
        return {"digit-loso": loso_accuracy(*train, data.groups, probe.logistic_c)}
    assert test is not None
    scores = {}
    for n in probe.label_budgets:
        draws = label_draws(train[1], n, probe.draws, seed)
        scores[f"linear@{n}"] = few_label_accuracy(train, test, draws, lambda: _logistic(probe.logistic_c))
    draws = label_draws(train[1], probe.knn_labels, probe.draws, seed)
    k = min(probe.knn_k, probe.knn_labels)
    knn = lambda: KNeighborsClassifier(n_neighbors=k, metric="cosine")  # noqa: E731
    scores[f"knn@{probe.knn_labels}"] = few_label_accuracy(train, test, draws, knn)
    return scores


# ---- code usage -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeDiagnostics:
    usage: list[LevelUsage]  # per level
    effective_rank: float  # participation ratio of the quantized vectors' covariance spectrum
    teacher_rank: float | None  # the same for the teacher features (E.features), when a teacher is given


def _quantizers(tokenizer: nn.Module) -> list[ResidualQuantizer]:
    rqs = [m for m in tokenizer.modules() if isinstance(m, ResidualQuantizer)]
    if not rqs:
        raise ValueError("the tokenizer has no ResidualQuantizer to measure")
    return rqs


def effective_rank(x: torch.Tensor) -> float:
    """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues l of x (N, D): 1 .. D."""
    x = x.double() - x.double().mean(0)
    eig = torch.linalg.eigvalsh(x.t() @ x / max(1, x.shape[0] - 1)).clamp_min(0)
    return float(eig.sum() ** 2 / (eig.pow(2).sum() + 1e-30))


@torch.no_grad()
def code_diagnostics(
    tokenizer: nn.Module,
    preprocess: nn.Module,
    data: MediaDataset,
    batch: int,
    teacher: nn.Module | None = None,
) -> CodeDiagnostics:
    """Per-level code usage of the frozen tokenizer over `data` (its codebooks are not updated), and the
    effective rank of what it quantizes (and of the teacher's patch features)."""
    tokenizer.eval()
    rqs = _quantizers(tokenizer)
    for q in rqs:
        q.freeze()
        q.reset_usage()
    embedded, taught = [], []
    for signal, _ in DataLoader(data, batch):
        x = preprocess(signal)
        tokenizer(x)
        embedded.append(tokenizer.embed(x).flatten(0, -2))  # (B N, code_dim)
        if teacher is not None:
            taught.append(teacher.features(x).flatten(0, -2))  # (B N, D_E)
    usage = [u for q in rqs for u in q.usage()]
    teacher_rank = effective_rank(torch.cat(taught)) if taught else None
    return CodeDiagnostics(usage, effective_rank(torch.cat(embedded)), teacher_rank)
