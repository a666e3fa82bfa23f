"""Shared by every test folder: the quick demo build, made once per test session (espeak-ng installed first
when missing); the folders whose tests share session state (exported models, running servers,
Ray) each kept on one pytest-xdist worker (`make test` runs
`pytest -n 2 --dist loadgroup`); and a check that makes a run in which no test passed a failure (so CI
cannot go green on an empty or all-skipped suite). Helpers shared across folders are modules of the
`tests` package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# folders run whole on one worker; the Docker tests are not among them: each compose test has a project
# of its own, and the steps that write what others read take a file lock (tests/packaging/docker_engine.py)
SHARED_STATE = {"service", "batch", "importers", "export", "runtime"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if folder in SHARED_STATE:
            item.add_marker(pytest.mark.xdist_group(folder))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bridle.data.demo_data import build_all

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=True)
    root = tmp_path_factory.mktemp("demo")
    build_all(root, quick=True, seed=0)
    return root


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller counts every worker's
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
