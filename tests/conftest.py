"""Shared by every test folder: the quick demo build, made once per test session (espeak-ng installed first
when missing), and a check that makes a run in which no test passed a failure (so CI cannot go green on an
empty or all-skipped suite). Helpers shared across folders are modules of the `tests` package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bridle_data.demo_data import build_all

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=True)
    root = tmp_path_factory.mktemp("demo")
    build_all(root, quick=True, seed=0)
    return root


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
