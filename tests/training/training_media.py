"""Small labelled media sets for the training tests: two classes that differ visibly/audibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bridle.data.demo_data import write_mp4, write_wav

CLASSES = ("high", "low")


def write_audio(root: Path, per_class: int, seed: int = 0) -> Path:
    """1 s tones: 'high' near 2 kHz, 'low' near 300 Hz, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(16_000) / 16_000
    for label, base in zip(CLASSES, (2000.0, 300.0), strict=True):
        for i in range(per_class):
            tone = np.sin(2 * np.pi * base * (1 + 0.1 * rng.random()) * t) + 0.1 * rng.standard_normal(t.size)
            write_wav(root / label / f"{i}.wav", (tone * 12_000).clip(-32768, 32767), 16_000)
    return root


def write_images(root: Path, per_class: int, size: int = 16, seed: int = 0) -> Path:
    """'high' = bright top half, 'low' = bright bottom half."""
    rng = np.random.default_rng(seed)
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            rows = slice(0, size // 2) if k == 0 else slice(size // 2, size)
            img[rows] += 180
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / label / f"{i}.png")
    return root


def write_videos(root: Path, per_class: int, size: int = 16, frames: int = 8, seed: int = 0) -> Path:
    """A bright square moving right ('high') or left ('low')."""
    rng = np.random.default_rng(seed)
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            clip = rng.integers(0, 40, (frames, size, size, 3), dtype=np.uint8)
            for f in range(frames):
                x = f if k == 0 else size - 4 - f
                clip[f, 6:10, x : x + 4] = 250
            write_mp4(root / label / f"{i}.mp4", clip, fps=8)
    return root


WRITERS = {"audio": write_audio, "image": write_images, "video": write_videos}


def write_media(modality: str, root: Path, per_class: int, seed: int = 0) -> Path:
    return WRITERS[modality](root, per_class, seed=seed)
