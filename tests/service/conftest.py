"""Real uvicorn servers on loopback, one per settings profile (module-scoped), over exported micro models."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from model_dirs import export_micro, export_unlabelled

from bridle_data.media_files import CONTENT_TYPES, make_audio, make_image, make_video

API_KEY = "s3cret-key"


@dataclass
class Server:
    url: str
    client: httpx.Client


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


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_server(model_dirs: list[Path], **settings_overrides) -> Iterator[Server]:
    """Start the app in a uvicorn server thread (its lifespan loads the models), wait for /ready, yield,
    then shut it down."""
    from service.app import create_app
    from service.settings import Settings

    # one ORT thread per run: the tests share two cores with the server
    defaults = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    app = create_app(Settings(model_dirs=model_dirs, **(defaults | settings_overrides)))
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = httpx.Client(base_url=url, timeout=20)
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)
    try:
        yield Server(url, client)
    finally:
        client.close()
        server.should_exit = True
        thread.join(10)
        sock.close()


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
