"""Upstream-layout BEATs files, imported and exported once per session through the real CLIs, and the
real HTTP service over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.importers.exported import Exported
from tests.live_server import run_server


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tmp_path_factory.mktemp("beats"))


@pytest.fixture(scope="session")
def exported_audioset(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """At BEATs' real window (992 frames: 9.935 s), its mids named by a class_labels_indices.csv."""
    return Exported(tmp_path_factory.mktemp("beats-audioset"), num_frames=992, audioset=True)


def serve(model_dir: Path) -> Iterator[httpx.Client]:
    """The service app in a uvicorn thread on a free loopback port, serving `model_dir`, once ready."""
    for server in run_server([model_dir], ready_within=30, timeout=60):
        yield server.client


@pytest.fixture(scope="module")
def client(exported: Exported) -> Iterator[httpx.Client]:
    yield from serve(exported.model_dir)


@pytest.fixture(scope="module")
def audioset_client(exported_audioset: Exported) -> Iterator[httpx.Client]:
    yield from serve(exported_audioset.model_dir)
