"""Training data: media files -> the raw signal the preprocessor takes, plus a label index.

A `MediaDataset` reads a data source as bridle/model/media_sets.py lists it: a folder of class sub-folders,
a CSV or JSONL manifest, or a folder of unlabelled files (label -1); it decodes the files there too, as
export's accuracy gate does. Items are what `bridle.model.preprocessing` takes, one example at a time
(docs/contracts.md):
  audio float32 (window_samples,)   mono at the model's rate, cut (start-aligned, or a random crop) or,
                                    when shorter, centred in silence (as the service windows it)
  image uint8   (3, S, S)
  video uint8   (T, 3, S, S)        T frames sampled uniformly over the first `clip_seconds`
The windows are cut by bridle/model/windowing.py, as the service cuts them; a long clip's training window
is a random crop drawn per (epoch, index). `make_item` is also how a shard's stored file becomes an item
(bridle/training/shards.py).
A file that cannot be decoded is skipped with one warning and recorded in `dataset.skipped`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from bridle.model.config import ModelConfig
from bridle.model.datasets import check_disjoint, cifar10_entries, label_subset, urbansound8k_entries
from bridle.model.decoding import MediaError
from bridle.model.media_sets import Entry, decode_example, entries_from, label_targets
from bridle.model.modalities import spec_for
from bridle.training.augment_settings import Augment
from bridle.training.recipe import DatasetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


# ---- one example -> the item ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemMaker:
    """A decoded example -> the item: augmented, and (a modality with an `item_window`: audio) its window
    cut. The augmentation draws from
    `default_rng([augment_seed, epoch or 0, index])`; so does the random crop of an epoch's item, the same on
    any worker, while an item asked for without an epoch (`data[i]`) gets a fresh crop from torch's
    generator each time."""

    cfg: ModelConfig
    random_crop: bool = False
    augment: Augment | None = None
    augment_seed: int = 0

    def __call__(self, array: np.ndarray, index: int, epoch: int | None) -> torch.Tensor:
        rng = np.random.default_rng([self.augment_seed, epoch or 0, index])
        if self.augment is not None:
            array = self.augment(array, rng)
        spec = spec_for(self.cfg.modality)
        if spec.item_window is None:  # the decoded example is the item
            return torch.from_numpy(np.ascontiguousarray(array))
        window = spec.item_window(self.cfg.input)
        start = 0
        if self.random_crop and len(array) > window:
            span = len(array) - window + 1
            start = int(rng.integers(span)) if epoch is not None else int(torch.randint(span, ()).item())
        return torch.from_numpy(spec.training_item(array, self.cfg.input, start))  # audio (window_samples,)


# ---- the data set ---------------------------------------------------------------------------------------


class MediaDataset(Dataset):
    """Media files -> (raw signal tensor, label index) pairs; see the module docstring.

    source: a class folder, an unlabelled folder, a .csv/.jsonl manifest, or a list of `Entry`.
    labels: a fixed label order (e.g. the training set's `labels` for the test set); default sorted names.
    cache: decode every file once at construction and keep the arrays in memory.
    random_crop: a random window of a longer clip (training), for a modality whose items are windows
        cut from the example (its spec's `item_window`: audio); otherwise start-aligned.
    label_column, split: which manifest column is the label, and which `split` rows to keep.
    labelled: force (True) or refuse (False) labels; None = labels when the source has them.
    augment: training only, applied to each decoded array (bridle/training/augment.py) with the generator
        `np.random.default_rng([augment_seed, epoch, index])`; items are `data[index]` (epoch 0) or
        `data[index, epoch]`, so each epoch draws new augmentations, the same for a seed on any worker.
    """

    def __init__(
        self,
        source: Path | str | Sequence[Entry],
        cfg: ModelConfig,
        labels: Sequence[str] | None = None,
        cache: bool = False,
        random_crop: bool = False,
        label_column: str | None = "label",
        split: str | None = None,
        labelled: bool | None = None,
        augment: Augment | None = None,
        augment_seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.random_crop = random_crop
        self.augment = augment
        self.augment_seed = augment_seed
        self.item_maker = ItemMaker(cfg, random_crop, augment, augment_seed)
        self.skipped: list[Skipped] = []
        entries = entries_from(source, cfg.modality, label_column, split, labelled)
        if not entries:
            raise ValueError(f"no {cfg.modality} files found in {source}")
        self.labels, self.targets = label_targets(entries, labels)
        self.entries = entries
        self._cache: list[np.ndarray] | None = None
        self._bad: set[int] = set()
        if cache:
            self._fill_cache()

    def _fill_cache(self) -> None:
        arrays, entries, targets = [], [], []
        bar = tqdm(self.entries, desc="decoding", unit="file", leave=False)
        for entry, target in zip(bar, self.targets, strict=True):
            array = self._try_decode(entry)
            if array is not None:
                arrays.append(array)
                entries.append(entry)
                targets.append(target)
        if not arrays:
            raise ValueError(f"none of the {len(self.entries)} files could be decoded")
        self._cache, self.entries, self.targets = arrays, entries, targets

    def _try_decode(self, entry: Entry) -> np.ndarray | None:
        try:
            return decode_example(entry.source, self.cfg)
        except (MediaError, OSError) as e:
            log.warning("skipping %s: %s", entry.path, e)
            self.skipped.append(Skipped(entry.path, str(e)))
            return None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def arrays(self) -> list[np.ndarray]:
        """The decoded examples, as cached (a cached data set only)."""
        if self._cache is None:
            raise RuntimeError("the data set was not decoded into memory (cache=False)")
        return self._cache

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        if self._cache is not None:
            return self.make_item(self._cache[i], i, epoch), self.targets[i]
        for j in _ring(i, len(self)):  # a bad file is replaced by the next good one
            if j in self._bad:
                continue
            array = self._try_decode(self.entries[j])
            if array is not None:
                return self.make_item(array, j, epoch), self.targets[j]
            self._bad.add(j)
        raise RuntimeError(f"none of the {len(self)} files could be decoded")

    def make_item(self, array: np.ndarray, index: int, epoch: int | None) -> torch.Tensor:
        return self.item_maker(array, index, epoch)

    def subset(self, indices: Sequence[int]) -> MediaDataset:
        """The same data set restricted to `indices` (in that order), sharing the decoded arrays."""
        part = copy.copy(self)
        part.entries = [self.entries[i] for i in indices]
        part.targets = [self.targets[i] for i in indices]
        part._cache = None if self._cache is None else [self._cache[i] for i in indices]
        part._bad, part.skipped = set(), []
        return part


# ---- public benchmark sets ------------------------------------------------------------------------------


def dataset_entries(spec: DatasetSpec) -> tuple[list[Entry], list[Entry] | None]:
    """The training and test entries of a recipe's `data.dataset` (bridle/model/datasets.py); the test
    part is None when the recipe names none. UrbanSound8K's recordings never straddle the two."""
    if spec.name == "urbansound8k":
        train, train_ids = urbansound8k_entries(spec.root, spec.train_folds)
        if not spec.test_folds:
            return train, None
        test, test_ids = urbansound8k_entries(spec.root, spec.test_folds)
        check_disjoint(train_ids, test_ids)
        return train, test
    train = cifar10_entries(spec.root, spec.train_split)
    return train, None if spec.test_split is None else cifar10_entries(spec.root, spec.test_split)


def label_share(data: MediaDataset, fraction: float, seed: int) -> MediaDataset:
    """`data` with a class-stratified `fraction` of its labelled examples (all of them at 1.0)."""
    if fraction >= 1.0:
        return data
    names = [data.labels[t] if t >= 0 else None for t in data.targets]
    return data.subset(label_subset(names, fraction, seed))


def _ring(start: int, n: int) -> list[int]:
    return [(start + k) % n for k in range(n)]
