"""The package layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass, and
no package imports tests/, including the sub-folders import-linter cannot see (they are not packages)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bridle", "experiments", "bench")
IMPORTS_TESTS = re.compile(r"^\s*(?:from|import)\s+tests(?:\.([\w.]+))?", re.M)


def test_import_linter_contracts_pass() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken" in done.stdout, done.stdout


def test_no_package_imports_tests() -> None:
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for match in IMPORTS_TESTS.finditer(path.read_text()):
                found.add((str(path.relative_to(REPO)), match.group(1) or ""))
    assert not found, f"imports of tests/ from the packages: {sorted(found)}"
