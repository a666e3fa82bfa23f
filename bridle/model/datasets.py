"""Readers of the public benchmark data sets, in the layouts their users download, as `Entry` lists.

    urbansound8k_entries(root, folds)      -> (entries, fsIDs)   UrbanSound8K clips of the given folds
    cifar10_entries(root, split)           -> entries            CIFAR-10 images of a named split
    label_subset(entries, fraction, seed)  -> indices            a class-stratified share of the labels

UrbanSound8K (J. Salamon, C. Jacoby, J. P. Bello, 2014; CC BY-NC 3.0;
https://urbansounddataset.weebly.com/urbansound8k.html) is read from either
  - the official release: `audio/foldN/<slice_file_name>` + `metadata/UrbanSound8K.csv`
    (slice_file_name, fsID, start, end, salience, fold, classID, class), or
  - a copy with `metadata.csv` (path, label, classID, fold, fsID, ...) and `path` relative to the root.
Its ten folds keep the slices of one recording (`fsID`) together; folds are never split here, and a
recording found in two asked-for folds of train and test is an error of the caller (`check_disjoint`).

CIFAR-10 (A. Krizhevsky, 2009; https://www.cs.toronto.edu/~kriz/cifar.html) is read from
  - the official python batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`, or the root itself),
  - class folders (`train/<class>/*`, `test/<class>/*`), or a zip of them (`train.zip`, `test.zip`).
Splits: `train-all` (the 50,000 training images), `val` (a fixed 5,000 of them, 500 per class, the same
for every reader of the same images), `train` (`train-all` minus `val`) and `test` (the official test set).
Images from the python batches are held as PNG bytes in `Entry.data`; those from a zip as the member's bytes.
"""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bridle.model.errors import BridleError
from bridle.model.media_sets import Entry, folder_entries
from bridle.model.modalities import spec_for

URBANSOUND8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)  # classID order
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)  # the official label order
CIFAR10_SPLITS = ("train", "val", "train-all", "test")
CIFAR10_VAL_PER_CLASS = 500
CIFAR10_VAL_SEED = 20091  # fixes which training images are the validation split


class DatasetError(BridleError, ValueError):
    """A benchmark data set is missing, in an unknown layout, or asked for a part it does not have."""


# ---- UrbanSound8K -----------------------------------------------------------------------------------------


def urbansound8k_entries(root: Path | str, folds: Sequence[int]) -> tuple[list[Entry], list[str]]:
    """The clips of `folds` (1-10), labelled by class name, and each clip's recording id (fsID)."""
    root = Path(root)
    wanted = {int(f) for f in folds}
    if not wanted or not wanted <= set(range(1, 11)):
        raise DatasetError(f"UrbanSound8K folds must be a non-empty subset of 1-10, got {sorted(folds)}")
    rows = _urbansound8k_rows(root)
    entries, recordings = [], []
    for path, label, fold, fs_id in rows:
        if fold in wanted:
            entries.append(Entry(path, label))
            recordings.append(fs_id)
    present = {fold for _, _, fold, _ in rows}
    if missing := sorted(wanted - present):
        raise DatasetError(f"{root} has no clips of fold(s) {missing} (it has folds {sorted(present)})")
    return entries, recordings


def _urbansound8k_rows(root: Path) -> list[tuple[Path, str, int, str]]:
    """(path, class name, fold, fsID) of every clip the metadata lists, in either layout."""
    official = root / "metadata" / "UrbanSound8K.csv"
    copy = root / "metadata.csv"
    if official.is_file():
        rows = _csv_rows(official, {"slice_file_name", "fsID", "fold", "class"})
        return [
            (
                root / "audio" / f"fold{r['fold']}" / r["slice_file_name"],
                r["class"],
                int(r["fold"]),
                r["fsID"],
            )
            for r in rows
        ]
    if copy.is_file():
        rows = _csv_rows(copy, {"path", "label", "fold", "fsID"})
        return [(root / r["path"], r["label"], int(r["fold"]), r["fsID"]) for r in rows]
    raise DatasetError(
        f"{root} is not UrbanSound8K: neither metadata/UrbanSound8K.csv nor metadata.csv is there"
    )


def _csv_rows(path: Path, needed: set[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if missing := sorted(needed - set(reader.fieldnames or ())):
            raise DatasetError(f"{path} lacks the column(s) {missing}")
        rows = list(reader)
    if unknown := sorted({r.get("class") or r.get("label") for r in rows} - set(URBANSOUND8K_CLASSES)):
        raise DatasetError(f"{path} names classes outside UrbanSound8K's ten: {unknown}")
    return rows


def check_disjoint(train: Sequence[str], test: Sequence[str]) -> None:
    """Refuse a train/test pair that shares a recording (fsID): its slices would straddle the two."""
    if shared := sorted(set(train) & set(test)):
        raise DatasetError(f"{len(shared)} recording(s) are in both train and test (fsID {shared[:5]} ...)")


# ---- CIFAR-10 ---------------------------------------------------------------------------------------------


def cifar10_entries(root: Path | str, split: str) -> list[Entry]:
    """The images of `split` (see the module docstring), labelled by class name, in a fixed order."""
    if split not in CIFAR10_SPLITS:
        raise DatasetError(f"CIFAR-10 split must be one of {list(CIFAR10_SPLITS)}, got {split!r}")
    root = Path(root)
    if split == "test":
        return _cifar10_part(root, "test")
    everything = _cifar10_part(root, "train")
    if split == "train-all":
        return everything
    val = set(validation_indices([e.label for e in everything]))
    keep = (lambda i: i in val) if split == "val" else (lambda i: i not in val)
    return [e for i, e in enumerate(everything) if keep(i)]


def validation_indices(labels: Sequence[str | None]) -> list[int]:
    """The fixed validation images: per class, `CIFAR10_VAL_PER_CLASS` drawn with `CIFAR10_VAL_SEED` from
    the class's images in their listed order (sorted file names, or batch order)."""
    rng = np.random.default_rng(CIFAR10_VAL_SEED)
    chosen: list[int] = []
    for name in CIFAR10_CLASSES:
        members = [i for i, label in enumerate(labels) if label == name]
        if len(members) < CIFAR10_VAL_PER_CLASS:
            raise DatasetError(
                f"class {name!r} has {len(members)} training images, fewer than the validation's"
            )
        chosen += sorted(rng.choice(members, CIFAR10_VAL_PER_CLASS, replace=False).tolist())
    return sorted(chosen)


def _cifar10_part(root: Path, part: str) -> list[Entry]:
    """`part` ("train" or "test") from whichever layout `root` holds."""
    batches = next((d for d in (root / "cifar-10-batches-py", root) if (d / "batches.meta").is_file()), None)
    if batches is not None:
        names = ["test_batch"] if part == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        return [e for name in names for e in _python_batch(batches / name)]
    if (root / part).is_dir():
        entries = folder_entries(root / part, "image", labelled=True)
        _check_classes({e.label for e in entries}, root / part)
        return entries
    if (root / f"{part}.zip").is_file():
        return _zip_entries(root / f"{part}.zip")
    raise DatasetError(
        f"{root} holds no CIFAR-10 {part} part: expected cifar-10-batches-py/, {part}/<class>/ or {part}.zip"
    )


def _python_batch(path: Path) -> list[Entry]:
    """One pickled batch (`data`: N x 3072 uint8 rows, R then G then B planes; `labels`) as PNG entries."""
    if not path.is_file():
        raise DatasetError(f"missing CIFAR-10 batch {path}")
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    pixels = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, H, W, 3)
    names = [n.decode() for n in batch[b"filenames"]]
    return [
        Entry(path / name, CIFAR10_CLASSES[label], data=_png(image))
        for name, label, image in zip(names, batch[b"labels"], pixels, strict=True)
    ]


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _zip_entries(path: Path) -> list[Entry]:
    """Members `<part>/<class>/<file>` of a zip of class folders, with their bytes, sorted by name."""
    entries = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) != 3 or Path(name).suffix.lower() not in spec_for("image").suffixes:
                continue
            entries.append(Entry(path / name, parts[1], data=archive.read(name)))
    _check_classes({e.label for e in entries}, path)
    return entries


def _check_classes(found: set[str | None], where: Path) -> None:
    if found != set(CIFAR10_CLASSES):
        raise DatasetError(f"{where} has the classes {sorted(map(str, found))}, not CIFAR-10's ten")


# ---- label fractions ---------------------------------------------------------------------------------------


def label_subset(labels: Sequence[str | None], fraction: float, seed: int) -> list[int]:
    """Indices of a class-stratified `fraction` of the labelled entries (at least one per class), drawn
    with `seed`; 1.0 keeps them all. The draws for a seed are nested: a smaller fraction's images are
    among a larger one's."""
    if not 0 < fraction <= 1:
        raise DatasetError(f"label_fraction must lie in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for name in sorted({label for label in labels if label is not None}):
        members = np.array([i for i, label in enumerate(labels) if label == name])
        order = rng.permutation(members)
        chosen += order[: max(1, round(fraction * len(members)))].tolist()
    return sorted(chosen)
