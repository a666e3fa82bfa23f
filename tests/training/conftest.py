"""The quick demo build, made once per test session (espeak-ng installed first when missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo_data import build_all

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=True)
    root = tmp_path_factory.mktemp("demo")
    build_all(root, quick=True, seed=0)
    return root
