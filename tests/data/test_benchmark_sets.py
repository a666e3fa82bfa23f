"""The public benchmark readers (bridle/model/datasets.py) on their official layouts and the project's
copies: UrbanSound8K folds and recordings, CIFAR-10's python batches, class folders and zip, the fixed
validation split and stratified label fractions."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bridle.data.small_benchmarks import RATE, official_urbansound8k
from bridle.model.config import preset
from bridle.model.datasets import (
    CIFAR10_CLASSES,
    URBANSOUND8K_CLASSES,
    DatasetError,
    check_disjoint,
    cifar10_entries,
    label_subset,
    urbansound8k_entries,
)
from bridle.model.media_sets import decode_example

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_urbansound8k_official_layout_by_fold(tmp_path: Path) -> None:
    root = official_urbansound8k(tmp_path)
    entries, ids = urbansound8k_entries(root, [2])
    assert len(entries) == 20 and {e.label for e in entries} == set(URBANSOUND8K_CLASSES)
    assert all(e.path.parent.name == "fold2" and e.path.is_file() for e in entries)
    assert all(i.startswith("2") for i in ids)  # fold 2's recordings only
    wave_ = decode_example(entries[0].source, preset("tiny-audio"))
    assert wave_.dtype == np.float32 and len(wave_) == RATE // 2


def test_urbansound8k_refuses_missing_folds_and_shared_recordings(tmp_path: Path) -> None:
    root = official_urbansound8k(tmp_path, folds=(1,))
    with pytest.raises(DatasetError, match=r"fold\(s\) \[3\]"):
        urbansound8k_entries(root, [1, 3])
    with pytest.raises(DatasetError, match="subset of 1-10"):
        urbansound8k_entries(root, [11])
    with pytest.raises(DatasetError, match="neither metadata"):
        urbansound8k_entries(tmp_path / "audio", [1])
    with pytest.raises(DatasetError, match="in both train and test"):
        check_disjoint(["1", "2"], ["2", "3"])


@pytest.mark.skipif(not (SHARED / "urbansound8k").is_dir(), reason="the project's UrbanSound8K copy")
def test_urbansound8k_copy_layout_keeps_recordings_within_folds() -> None:
    fold1, ids1 = urbansound8k_entries(SHARED / "urbansound8k", [1])
    fold2, ids2 = urbansound8k_entries(SHARED / "urbansound8k", [2])
    assert (len(fold1), len(fold2)) == (873, 888)
    check_disjoint(ids1, ids2)  # the official folds never split a recording


def write_python_batches(root: Path, per_batch: int) -> np.ndarray:
    """cifar-10-batches-py with 5 training batches and a test batch of `per_batch` seeded images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        names = [f"{name}_{i}.png".encode() for i in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"filenames": names}, f)
        first = data if first is None else first
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    )
    return first


def test_cifar10_python_batches_decode_to_their_pixels(tmp_path: Path) -> None:
    first = write_python_batches(tmp_path, per_batch=20)
    test = cifar10_entries(tmp_path, "test")
    assert len(test) == 20 and [e.label for e in test[:3]] == list(CIFAR10_CLASSES[:3])
    everything = cifar10_entries(tmp_path, "train-all")
    assert len(everything) == 100
    image = decode_example(everything[0].source, preset("tiny-image"))  # (3, 32, 32): R, G, B planes
    np.testing.assert_array_equal(image, first[0].reshape(3, 32, 32))
    with pytest.raises(DatasetError, match="fewer than the validation"):
        cifar10_entries(tmp_path, "val")  # 10 images a class cannot give 500
    with pytest.raises(DatasetError, match="split must be one of"):
        cifar10_entries(tmp_path, "validation")


def test_cifar10_class_folders_and_missing_parts(tmp_path: Path) -> None:
    from PIL import Image

    for name in CIFAR10_CLASSES:
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "test" / name / "0001.png")
    assert [e.label for e in cifar10_entries(tmp_path, "test")] == list(CIFAR10_CLASSES)
    with pytest.raises(DatasetError, match="no CIFAR-10 train part"):
        cifar10_entries(tmp_path, "train")


@pytest.mark.skipif(not (SHARED / "cifar10" / "train.zip").is_file(), reason="the project's CIFAR-10 copy")
def test_cifar10_validation_split_is_fixed_balanced_and_apart_from_train() -> None:
    val = cifar10_entries(SHARED / "cifar10", "val")
    train = cifar10_entries(SHARED / "cifar10", "train")
    assert (len(val), len(train)) == (5000, 45000)
    assert Counter(e.label for e in val) == dict.fromkeys(CIFAR10_CLASSES, 500)
    assert not {e.path for e in val} & {e.path for e in train}
    assert [e.path for e in cifar10_entries(SHARED / "cifar10", "val")] == [e.path for e in val]


def test_label_subset_is_stratified_nested_and_keeps_every_class() -> None:
    labels = [c for c in "abc" for _ in range(100)] + [None, "d"]
    tenth = label_subset(labels, 0.1, seed=3)
    assert sorted(labels[i] for i in tenth).count("a") == 10 and labels.index("d") in tenth  # >= 1 a class
    assert set(label_subset(labels, 0.01, seed=3)) <= set(tenth) <= set(label_subset(labels, 0.5, seed=3))
    assert label_subset(labels, 0.1, seed=4) != tenth
    assert None not in {labels[i] for i in label_subset(labels, 1.0, seed=0)}
    with pytest.raises(DatasetError, match="label_fraction"):
        label_subset(labels, 0.0, seed=0)
