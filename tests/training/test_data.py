"""MediaDataset on folders and manifests of all three modalities, with a corrupt file mixed in."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bridle.model.config import preset
from bridle.model.media_sets import manifest_entries, split_by_metadata
from bridle.training.data import MediaDataset

SETS = {
    "audio": ("audio-digits", ".wav"),
    "image": ("image-digits", ".png"),
    "video": ("video-motion", ".mp4"),
}
GARBAGE = b"this is not a media file" * 10


def item_shape(modality: str) -> tuple[tuple[int, ...], torch.dtype]:
    cfg = preset(f"micro-{modality}")
    if modality == "audio":
        return (cfg.input.window_samples,), torch.float32
    s = cfg.input.image_size
    if modality == "image":
        return (3, s, s), torch.uint8
    return (cfg.input.num_frames, 3, s, s), torch.uint8


def class_folder_with_a_bad_file(demo_root: Path, tmp_path: Path, modality: str) -> Path:
    """Two class folders of two good files each (from the quick demo build) plus one corrupt file."""
    name, suffix = SETS[modality]
    out = tmp_path / modality
    for cls in sorted(p.name for p in (demo_root / name / "train").iterdir())[:2]:
        (out / cls).mkdir(parents=True)
        for f in sorted((demo_root / name).glob(f"*/{cls}/*"))[:2]:
            shutil.copy(f, out / cls / f.name)
    (out / cls / f"zz-corrupt{suffix}").write_bytes(GARBAGE)
    return out


@pytest.mark.parametrize("modality", ["audio", "image", "video"])
@pytest.mark.parametrize("cache", [True, False])
def test_class_folder_items_and_a_corrupt_file_skipped(
    demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, modality: str, cache: bool
) -> None:
    folder = class_folder_with_a_bad_file(demo_root, tmp_path, modality)
    with caplog.at_level(logging.WARNING, logger="bridle.training.data"):
        ds = MediaDataset(folder, preset(f"micro-{modality}"), cache=cache)
        items = [ds[i] for i in range(len(ds))]
    assert ds.labels == sorted(p.name for p in folder.iterdir())
    assert len(ds.skipped) == 1 and ds.skipped[0].path.name.startswith("zz-corrupt")
    assert sum("zz-corrupt" in r.getMessage() for r in caplog.records) == 1
    assert len(ds) == (4 if cache else 5)  # lazily, the bad file is replaced by another item
    shape, dtype = item_shape(modality)
    for signal, label in items:
        assert signal.shape == shape and signal.dtype == dtype
        assert label in (0, 1)
    assert sorted(label for _, label in items[:4]) == [0, 0, 1, 1]
    batch, labels = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, *shape) and labels.dtype == torch.int64


def write_manifests(folder: Path) -> tuple[Path, Path]:
    """A CSV and a JSONL manifest beside `folder`, with paths relative to the manifest's folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rows = [{"path": p.relative_to(folder.parent).as_posix(), "label": p.parent.name} for p in files]
    csv_path, jsonl_path = folder.parent / "items.csv", folder.parent / "items.jsonl"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return csv_path, jsonl_path


@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_csv_and_jsonl_manifests_with_a_fixed_label_order(
    demo_root: Path, tmp_path: Path, modality: str
) -> None:
    folder = class_folder_with_a_bad_file(demo_root, tmp_path, modality)
    fixed = [*sorted((p.name for p in folder.iterdir()), reverse=True), "unused"]
    cfg = preset(f"micro-{modality}")
    for manifest in write_manifests(folder):
        ds = MediaDataset(manifest, cfg, labels=fixed, cache=True)
        assert ds.labels == fixed and len(ds) == 4 and len(ds.skipped) == 1
        for i, entry in enumerate(ds.entries):
            assert ds[i][1] == fixed.index(entry.path.parent.name)


def test_unknown_label_and_bad_manifest_are_clear_errors(demo_root: Path, tmp_path: Path) -> None:
    folder = class_folder_with_a_bad_file(demo_root, tmp_path, "image")
    with pytest.raises(ValueError, match="not in the given label list"):
        MediaDataset(folder, preset("micro-image"), labels=["zero"])
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        MediaDataset(tmp_path / "bad.csv", preset("micro-image"))
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        MediaDataset(tmp_path / "bad.jsonl", preset("micro-image"))
    with pytest.raises(FileNotFoundError):
        MediaDataset(tmp_path / "missing", preset("micro-image"))


def test_unlabelled_folder_gives_label_minus_one(demo_root: Path) -> None:
    ds = MediaDataset(demo_root / "image-digits" / "test", preset("micro-image"), labelled=False)
    assert ds.labels == [] and set(ds.targets) == {-1}
    assert len(ds) == len(list((demo_root / "image-digits" / "test").rglob("*.png")))
    assert ds[0][1] == -1


def test_metadata_label_column_builds_a_speaker_task(demo_root: Path) -> None:
    metadata = demo_root / "audio-digits" / "metadata.csv"
    splits = split_by_metadata(metadata, label_column="voice")
    assert set(splits) == {"train", "test"}
    train = MediaDataset(splits["train"], preset("micro-audio"))
    voices = {e.label for e in train.entries}
    assert train.labels == sorted(voices) and len(voices) == 4  # the quick build's training voices
    test = MediaDataset(metadata, preset("micro-audio"), split="test", label_column="digit")
    assert len(test) == len(splits["test"]) and test.labels == sorted(
        {e.path.parent.name for e in splits["test"]}
    )
    with pytest.raises(ValueError, match="no 'speaker' column"):
        manifest_entries(metadata, label_column="speaker")


def test_audio_window_is_randomly_cropped(demo_root: Path) -> None:
    cfg = preset("micro-audio")  # 5360-sample windows, shorter than a spoken digit
    folder = demo_root / "audio-digits" / "train"
    aligned = MediaDataset(folder, cfg, cache=True)
    cropped = MediaDataset(folder, cfg, cache=True, random_crop=True)
    assert torch.equal(aligned[0][0], aligned[0][0])
    torch.manual_seed(0)
    crops = {tuple(cropped[0][0][:50].tolist()) for _ in range(5)}
    assert len(crops) > 1
