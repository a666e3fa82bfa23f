"""Small stand-ins of the public benchmark sets in their official layouts, for tests: an UrbanSound8K
release tree (audio/foldN/ + metadata/UrbanSound8K.csv) whose classes are tones of their own pitch."""

from __future__ import annotations

import csv
from pathlib import Path

from bridle.data.media_files import make_audio
from bridle.model.datasets import URBANSOUND8K_CLASSES

RATE = 16_000


def official_urbansound8k(root: Path, per_class: int = 2, folds: tuple[int, ...] = (1, 2)) -> Path:
    """UrbanSound8K's release layout: audio/foldN/<fsID>-<classID>-0-<slice>.wav + metadata/UrbanSound8K.csv,
    each class a tone of its own pitch, two slices per recording."""
    rows = []
    for fold in folds:
        for class_id, name in enumerate(URBANSOUND8K_CLASSES):
            for k in range(per_class):
                fs_id = 1000 * fold + 10 * class_id + k // 2
                file = f"{fs_id}-{class_id}-0-{k}.wav"
                make_audio(
                    root / "audio" / f"fold{fold}" / file, 0.5 + 0.1 * k, RATE, hz=200.0 * (class_id + 1)
                )
                rows.append([file, fs_id, 0.0, 0.5, 1, fold, class_id, name])
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        out.writerows(rows)
    return root
