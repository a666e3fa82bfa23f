"""The runtime on its own: a real micro model (bridle's own exporter), real ONNX Runtime sessions, and the
engine and its client in one event loop over socket pairs (tests/runtime/engine_link.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.service.model_dirs import LABELS, export_one

MODEL = "micro-audio"


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """micro-audio, exported once per session (torch export is the slow part)."""
    return export_one(tmp_path_factory.mktemp("export") / MODEL, "audio", MODEL, LABELS, seed=0)


@pytest.fixture
def model_root(exported: Path, tmp_path: Path) -> Path:
    """A folder holding micro-audio as version 1 (`micro-audio/1/`): a reload test adds or removes
    versions in it."""
    shutil.copytree(exported, tmp_path / "models" / MODEL / "1")
    return tmp_path / "models"
