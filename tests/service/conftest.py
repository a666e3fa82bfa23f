"""Real uvicorn servers on loopback, one per settings profile (module-scoped), over exported micro models."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_dirs import export_micro, export_unlabelled

from bridle.data.media_files import CONTENT_TYPES, make_audio, make_image, make_video
from tests.live_server import Server, run_server

__all__ = ["Server", "run_server"]  # the service tests import them from here

API_KEY = "s3cret-key"


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three real micro exports (audio, image, video), as `models/` is laid out; exported once
    per session because torch export is the slow part of the suite."""
    root = tmp_path_factory.mktemp("models")
    export_micro(root)
    return root


@pytest.fixture(scope="session")
def unlabelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_unlabelled(tmp_path_factory.mktemp("plain") / "m")


# ---- media ---------------------------------------------------------------------------------------

MICRO_AUDIO_WINDOW_S = 5360 / 16_000  # micro-audio: (32 - 1) * 160 + 400 samples


@pytest.fixture(scope="session")
def media_files() -> dict[str, tuple[bytes, str]]:
    """One short file per format: format -> (bytes, content type)."""
    files = {f: make_audio(f, 0.3) for f in ("wav", "flac", "mp3", "ogg")}
    files |= {f: make_image(f) for f in ("png", "jpeg")}
    files |= {f: make_video(f, 0.8) for f in ("mp4", "webm")}
    return {f: (data, CONTENT_TYPES[f]) for f, data in files.items()}


@pytest.fixture(scope="session")
def long_audio() -> tuple[bytes, str, float]:
    """A wav 2.5 windows of micro-audio long, and the window length in seconds."""
    return make_audio("wav", 2.5 * MICRO_AUDIO_WINDOW_S), "audio/wav", MICRO_AUDIO_WINDOW_S


@pytest.fixture(scope="session")
def long_video() -> tuple[bytes, str]:
    return make_video("mp4", 2.5), "video/mp4"


@pytest.fixture(scope="session")
def audio_of_seconds():
    return lambda seconds: (make_audio("wav", seconds), "audio/wav")


@pytest.fixture(scope="session")
def big_image() -> tuple[bytes, str]:
    return make_image("png", (400, 400)), "image/png"


@pytest.fixture(scope="session")
def frameless_video() -> tuple[bytes, str]:
    """An mp4 with an audio track and no video frames."""
    return make_audio("m4a", 0.5), "video/mp4"  # an mp4 container with only an audio track
