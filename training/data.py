"""Training data: media files -> the raw signal the preprocessor takes, plus a label index.

A `MediaDataset` reads one of
  (a) a folder of class sub-folders (`<root>/<label>/**/<file>`), labels = sub-folder names;
  (b) a CSV or JSONL manifest with a `path` column and an optional label column (relative paths are
      resolved against the manifest's folder; a `split` column can select rows, e.g. a demo `metadata.csv`);
  (c) a folder of unlabelled files (pretraining), label -1.
Items are what `bridle_model.preprocessing` takes, one example at a time (docs/contracts.md):
  audio float32 (window_samples,)   mono at the model's rate, cut (start-aligned, or a random crop) or,
                                    when shorter, centred in silence (as the service windows it)
  image uint8   (3, S, S)
  video uint8   (T, 3, S, S)        T frames sampled uniformly over the first `clip_seconds`
The windows are cut by bridle_model/windowing.py, as the service cuts them; a long clip's training
window is a random crop drawn per (epoch, index). `make_item` is also how a shard's stored file becomes an
item (training/shards.py).
A file that cannot be decoded is skipped with one warning and recorded in `dataset.skipped`.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from bridle_model.config import ModelConfig
from bridle_model.decoding import MediaError, decode_audio, decode_image, decode_video
from bridle_model.windowing import first_clip, training_window
from training.augment import Augment

log = logging.getLogger(__name__)

MEDIA_SUFFIXES = {
    "audio": {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".mp4"},
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"},
    "video": {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v"},
}
UNLABELLED = -1


@dataclass(frozen=True)
class Entry:
    """One file of a data set and its label name (None when unlabelled)."""

    path: Path
    label: str | None = None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


# ---- where the files are --------------------------------------------------------------------------------


def media_files(folder: Path, modality: str) -> list[Path]:
    """Media files of `modality` under `folder` (recursive, hidden files left out), sorted."""
    suffixes = MEDIA_SUFFIXES[modality]
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in suffixes)


def folder_entries(folder: Path, modality: str, labelled: bool | None = None) -> list[Entry]:
    """(a) class sub-folders, or (c) unlabelled files. `labelled=None` picks (a) when sub-folders exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled is None:
        labelled = bool(classes)
    if not labelled:
        return [Entry(p) for p in media_files(folder, modality)]
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders")
    return [Entry(p, c.name) for c in classes for p in media_files(c, modality)]


def read_manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """Rows of a CSV (header line) or JSONL (one object a line) manifest."""
    manifest = Path(manifest)
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="") as f:
            return list(csv.DictReader(f))
    if manifest.suffix.lower() in {".jsonl", ".ndjson"}:
        lines = manifest.read_text().splitlines()
        return [_json_row(manifest, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    raise ValueError(f"manifest {manifest} must be .csv or .jsonl")


def _json_row(manifest: Path, line_number: int, line: str) -> dict[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{manifest}:{line_number}: not JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise ValueError(f"{manifest}:{line_number}: expected an object, got {type(row).__name__}")
    return {k: None if v is None else str(v) for k, v in row.items()}


def manifest_entries(
    manifest: Path, label_column: str | None = "label", split: str | None = None
) -> list[Entry]:
    """(b) entries of a manifest; `label_column=None` (or a manifest without it) gives unlabelled entries."""
    manifest = Path(manifest)
    rows = read_manifest_rows(manifest)
    if rows and "path" not in rows[0]:
        raise ValueError(f"manifest {manifest} has no 'path' column (columns: {sorted(rows[0])})")
    if split is not None:
        if rows and "split" not in rows[0]:
            raise ValueError(f"manifest {manifest} has no 'split' column to select {split!r}")
        rows = [r for r in rows if r["split"] == split]
    labelled = label_column is not None and bool(rows) and label_column in rows[0]
    if label_column is not None and rows and not labelled and label_column != "label":
        raise ValueError(f"manifest {manifest} has no {label_column!r} column (columns: {sorted(rows[0])})")
    base = manifest.parent
    return [Entry(base / r["path"], (r[label_column] or None) if labelled else None) for r in rows]


def split_by_metadata(metadata: Path, label_column: str = "label") -> dict[str, list[Entry]]:
    """Entries of a demo `metadata.csv` grouped by its `split` column, labelled by `label_column`
    (e.g. "voice" for speaker identification on audio-digits)."""
    splits: dict[str, list[Entry]] = {}
    for row_split in sorted({r["split"] for r in read_manifest_rows(metadata)}):
        splits[row_split] = manifest_entries(metadata, label_column, split=row_split)
    return splits


def entries_from(
    source: Path | str | Sequence[Entry],
    modality: str,
    label_column: str | None,
    split: str | None,
    labelled: bool | None,
) -> list[Entry]:
    if not isinstance(source, (str, Path)):
        return list(source)
    source = Path(source)
    if source.is_dir():
        return folder_entries(source, modality, labelled)
    if source.is_file():
        return manifest_entries(source, label_column if labelled is not False else None, split)
    raise FileNotFoundError(f"no such data source: {source}")


# ---- decoding one example -------------------------------------------------------------------------------


def decode_example(path: Path | bytes, cfg: ModelConfig) -> np.ndarray:
    """The example as stored in the cache: audio the whole waveform; image/video the final item array.

    `path` may also be the file's bytes (a shard's member, training/shards.py)."""
    if cfg.modality == "audio":
        return decode_audio(path, cfg.input.sample_rate)  # (samples,) float32
    if cfg.modality == "image":
        return decode_image(path, cfg.input.image_size)  # (3, S, S) uint8
    video = decode_video(path, cfg.input.image_size)
    return first_clip(video, cfg.input.num_frames, cfg.input.clip_seconds)  # (T, 3, S, S) uint8


# ---- one example -> the item ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemMaker:
    """A decoded example -> the item: augmented, and (audio) its window cut. The augmentation draws from
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
        if self.cfg.modality != "audio":
            return torch.from_numpy(np.ascontiguousarray(array))
        window = self.cfg.input.window_samples
        start = 0
        if self.random_crop and len(array) > window:
            span = len(array) - window + 1
            start = int(rng.integers(span)) if epoch is not None else int(torch.randint(span, ()).item())
        return torch.from_numpy(training_window(array, window, start))  # (window_samples,) float32


# ---- the data set ---------------------------------------------------------------------------------------


class MediaDataset(Dataset):
    """Media files -> (raw signal tensor, label index) pairs; see the module docstring.

    source: a class folder, an unlabelled folder, a .csv/.jsonl manifest, or a list of `Entry`.
    labels: a fixed label order (e.g. the training set's `labels` for the test set); default sorted names.
    cache: decode every file once at construction and keep the arrays in memory.
    random_crop: audio only, a random window of a longer clip (training); otherwise start-aligned.
    label_column, split: which manifest column is the label, and which `split` rows to keep.
    labelled: force (True) or refuse (False) labels; None = labels when the source has them.
    augment: training only, applied to each decoded array (training/augment.py) with the generator
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
        names = sorted({e.label for e in entries if e.label is not None})
        self.labels: list[str] = list(labels) if labels is not None else names
        unknown = sorted(set(names) - set(self.labels))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the given label list {self.labels}")
        index = {name: i for i, name in enumerate(self.labels)}
        self.entries = entries
        self.targets = [UNLABELLED if e.label is None else index[e.label] for e in entries]
        self._cache: list[np.ndarray] | None = None
        self._bad: set[int] = set()
        if cache:
            self._fill_cache()

    def _fill_cache(self) -> None:
        arrays, entries, targets = [], [], []
        bar = tqdm(self.entries, desc="decoding", unit="file", leave=False)
        for entry, target in zip(bar, self.targets, strict=True):
            array = self._try_decode(entry.path)
            if array is not None:
                arrays.append(array)
                entries.append(entry)
                targets.append(target)
        if not arrays:
            raise ValueError(f"none of the {len(self.entries)} files could be decoded")
        self._cache, self.entries, self.targets = arrays, entries, targets

    def _try_decode(self, path: Path) -> np.ndarray | None:
        try:
            return decode_example(path, self.cfg)
        except (MediaError, OSError) as e:
            log.warning("skipping %s: %s", path, e)
            self.skipped.append(Skipped(path, str(e)))
            return None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        if self._cache is not None:
            return self.make_item(self._cache[i], i, epoch), self.targets[i]
        for j in _ring(i, len(self)):  # a bad file is replaced by the next good one
            if j in self._bad:
                continue
            array = self._try_decode(self.entries[j].path)
            if array is not None:
                return self.make_item(array, j, epoch), self.targets[j]
            self._bad.add(j)
        raise RuntimeError(f"none of the {len(self)} files could be decoded")

    def make_item(self, array: np.ndarray, index: int, epoch: int | None) -> torch.Tensor:
        return self.item_maker(array, index, epoch)


def _ring(start: int, n: int) -> list[int]:
    return [(start + k) % n for k in range(n)]
