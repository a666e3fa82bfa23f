"""Model directories for the service tests, made by bridle's own exporter (torch -> ONNX).

The service must serve exactly what `bridle.export.model_dir.export_model_dir` writes, so the tests use real
exports of the untrained micro presets rather than hand-written graphs that could drift from the exporter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bridle.export.model_dir import export_model_dir
from bridle.model.checkpoint import build_servable
from bridle.model.config import preset

MODALITIES = ("audio", "image", "video")
LABELS = ["cat", "dog", "eight", "five"]
VIDEO_WINDOW_SECONDS = 1.0  # the micro-video clip length the service samples its frames from


def export_one(directory: Path, modality: str, name: str, labels: list[str], seed: int) -> Path:
    """Export a freshly seeded micro preset of `modality` to `directory`; returns the model directory."""
    config = preset(f"micro-{modality}")
    if modality == "video":
        config = dataclasses.replace(
            config, input=dataclasses.replace(config.input, clip_seconds=VIDEO_WINDOW_SECONDS)
        )
    servable = build_servable(config, labels=labels, seed=seed)
    return export_model_dir(servable, directory, name=name, run_verify=False).model_dir


def export_micro(root: Path) -> dict[str, Path]:
    """micro-audio / micro-image / micro-video under root/audio, root/image, root/video (as `models/` is
    laid out); modality -> model directory."""
    return {m: export_one(root / m, m, f"micro-{m}", LABELS, seed=i) for i, m in enumerate(MODALITIES)}


def export_unlabelled(directory: Path) -> Path:
    """An image model without a classifier head ("plain-image"): /classify must refuse it."""
    return export_one(directory, "image", "plain-image", labels=[], seed=7)
