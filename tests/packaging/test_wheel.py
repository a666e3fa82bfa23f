"""The built wheel installs one top-level name, `bridle` (issue 41): the library's sub-packages, the
recipes and the page, the six commands; not bench/, experiments/ or tests/, which live in the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "bridle-train": "bridle.training.cli:main",
    "bridle-export": "bridle.export.cli:main",
    "bridle-serve": "bridle.service.cli:main",
    "bridle-batch": "bridle.batch.cli:main",
    "bridle-import": "bridle.importers.cli:main",
    "bridle-client": "bridle.client:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy of the tracked files, so a local build/ or egg-info cannot leak into the wheel
    source = out / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and not name.startswith(("models/", "results/", "tests/", "docs/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
         "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("bridle-*.whl")
    return zipfile.ZipFile(path)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(member).decode()


def test_the_wheel_installs_one_top_level_name(wheel: zipfile.ZipFile) -> None:
    assert _dist_info(wheel, "top_level.txt").split() == ["bridle"]
    tops = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"bridle"}, tops


def test_the_wheel_holds_every_sub_package_and_its_data(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in ("model", "runtime", "service", "batch", "export", "importers", "training", "data"):
        assert f"bridle/{package}/__init__.py" in names, package
    assert "bridle/client.py" in names
    recipes = {n for n in names if n.startswith("bridle/training/recipes/") and n.endswith(".yaml")}
    assert recipes == {
        f"bridle/training/recipes/{p.name}" for p in (REPO / "bridle/training/recipes").glob("*.yaml")
    }
    assert "bridle/service/static/index.html" in names


def test_the_commands_keep_their_names(wheel: zipfile.ZipFile) -> None:
    scripts = _dist_info(wheel, "entry_points.txt").split("[console_scripts]")[1]
    entries = dict(line.split(" = ") for line in scripts.strip().splitlines() if " = " in line)
    assert entries == COMMANDS
