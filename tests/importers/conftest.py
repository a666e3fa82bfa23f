"""Upstream-layout BEATs files, imported and exported once per session through the real CLIs, and the
real HTTP service over them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.importers.exported import Exported


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tmp_path_factory.mktemp("beats"))


@pytest.fixture(scope="session")
def exported_audioset(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """At BEATs' real window (992 frames: 9.935 s), its mids named by a class_labels_indices.csv."""
    return Exported(tmp_path_factory.mktemp("beats-audioset"), num_frames=992, audioset=True)


def serve(model_dir: Path) -> Iterator[httpx.Client]:
    """The service app in a uvicorn thread on a free loopback port, serving `model_dir`, once ready."""
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model_dirs=[model_dir], providers=["CPUExecutionProvider"], intra_op_threads=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=60) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        yield http
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def client(exported: Exported) -> Iterator[httpx.Client]:
    yield from serve(exported.model_dir)


@pytest.fixture(scope="module")
def audioset_client(exported_audioset: Exported) -> Iterator[httpx.Client]:
    yield from serve(exported_audioset.model_dir)
