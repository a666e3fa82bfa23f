"""A small mixed dataset (audio, images, video, broken files) made with bridle/data/media_files.py, and the
bundled models it runs against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bridle.data.media_files import make_audio, make_image, make_video

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = REPO / "models"
AUDIO_WINDOW_S = 1.295  # models/audio-digits

# name -> the errors-table code of a file that cannot be used (the others make windows)
BROKEN = {"broken.wav": "corrupt", "images/empty.png": "empty", "notes.txt": "unsupported"}


@dataclass(frozen=True)
class Dataset:
    root: Path
    broken: dict[str, str]  # relative path -> errors-table code


@pytest.fixture(scope="session")
def bundled_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder of the three digit models (linked), each the first model of its kind, as these tests
    expect: in models/ itself image-cifar10 sorts before image-digits."""
    folder = tmp_path_factory.mktemp("digit-models")
    for name in ("audio-digits", "image-digits", "video-motion"):
        (folder / name).symlink_to(BUNDLED_MODELS / name, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Nine files in a folder tree: six usable, three not (BROKEN)."""
    root = tmp_path_factory.mktemp("mixed")
    make_audio(root / "audio" / "speech.wav", 2.5 * AUDIO_WINDOW_S, kind="speechlike")  # 3 windows
    make_audio(root / "audio" / "tone.flac", 0.7, hz=660.0)
    make_audio(root / "audio" / "noise.mp3", 1.5, kind="noise")
    (root / "images").mkdir()
    (root / "images" / "digit.png").write_bytes(make_image("png", (40, 30)))
    (root / "images" / "photo.jpeg").write_bytes(make_image("jpeg", (64, 48)))
    (root / "clip.mp4").write_bytes(make_video("mp4", 2.5))  # 2 windows of 2 s
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt \xff\xff\xff\x7fnot a wav")
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not media\n")
    return Dataset(root, BROKEN)
