"""Where a data set's media files are, and one file decoded as the graphs take it: shared by training
(bridle/training/data.py) and the accuracy gate of the export (bridle/export/gate.py). numpy, PyAV and Pillow
only.

A data source is one of
  (a) a folder of class sub-folders (`<root>/<label>/**/<file>`), labels = sub-folder names;
  (b) a CSV or JSONL manifest with a `path` column and an optional label column (relative paths are
      resolved against the manifest's folder; a `split` column can select rows, e.g. a demo `metadata.csv`);
  (c) a folder of unlabelled files (pretraining), label -1 (`UNLABELLED`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridle.model.config import ModelConfig
from bridle.model.modalities import Modality, spec_for

UNLABELLED = -1


@dataclass(frozen=True)
class Entry:
    """One file of a data set and its label name (None when unlabelled). `data` holds the file's bytes when
    it is not a file of its own (a zip member, an image of CIFAR-10's python batches); `path` names it."""

    path: Path
    label: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> Path | bytes:
        """What `decode_example` reads: the bytes when held, else the file."""
        return self.data if self.data is not None else self.path


# ---- where the files are --------------------------------------------------------------------------------


def media_files(folder: Path, modality: Modality) -> list[Path]:
    """Media files of `modality` (its spec's suffixes) under `folder` (recursive, hidden files left out),
    sorted."""
    suffixes = spec_for(modality).suffixes
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in suffixes)


def folder_entries(folder: Path, modality: Modality, labelled: bool | None = None) -> list[Entry]:
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
    modality: Modality,
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
    """The example as stored in the cache (its modality spec's `decode_example`): audio the whole
    waveform; image/video the final item array.

    `path` may also be the file's bytes (a shard's member, bridle/training/shards.py)."""
    return spec_for(cfg.modality).decode_example(path, cfg.input)


def label_targets(entries: Sequence[Entry], labels: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """The label order (`labels`, or the sorted names of the entries) and each entry's index in it
    (`UNLABELLED` for an entry without a label); a label outside a given order is an error."""
    names = sorted({e.label for e in entries if e.label is not None})
    order = list(labels) if labels is not None else names
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the given label list {order}")
    index = {name: i for i, name in enumerate(order)}
    return order, [UNLABELLED if e.label is None else index[e.label] for e in entries]
