"""Training in compose on the CPU: the `train` service makes the quick spoken-digit demo data (espeak-ng in
the image), trains the micro recipe and exports it, all in a project folder owned by another user than the
container's; everything it writes belongs to that folder's owner on the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.docker_engine import PROJECT, REPO, Engine, project_name

pytestmark = pytest.mark.slow
BUILD_AND_TRAIN_S = (
    1200  # a cold build of the training image (torch) and the training, beside a parallel suite
)

HOST_UID = 12345  # a host user that exists in no image


@pytest.mark.timeout(BUILD_AND_TRAIN_S)
def test_train_service_trains_and_exports_as_the_project_owner(engine: Engine, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "bridle" / "training" / "recipes" / "micro.yaml", project / "micro.yaml")
    owner = os.stat(project).st_uid
    if os.geteuid() == 0:
        owner = HOST_UID
        for path in (project, project / "micro.yaml"):
            os.chown(path, HOST_UID, HOST_UID)
    # a compose project of its own: another test process may run compose meanwhile
    env = {"BRIDLE_PROJECT": str(project), PROJECT: project_name()}

    def run(*command: str) -> subprocess.CompletedProcess:
        return engine.compose("--profile", "train", "run", "--rm", "-T", "train", *command, env=env)

    engine.build(["bridle:train"], "--profile", "train", env=env)
    try:
        _train_and_export(run, project, owner)
    finally:
        down = engine.down("--profile", "train", env=env)
    assert down.returncode == 0, down.stderr


def _train_and_export(run, project: Path, owner: int) -> None:
    def train(*command: str) -> str:
        return run(*command).stdout

    built = run("python", "-m", "bridle.data.demo_data", "--out", "data", "--quick", "--only", "audio-digits")
    # once, under a parallel suite, the run exited 0 and the marker was missing: say what it printed
    found = sorted(str(p.relative_to(project)) for p in project.rglob("*"))[:50]
    said = f"{built.stdout[-2000:]}\n{built.stderr[-2000:]}\n{found}"
    assert (project / "data" / "audio-digits" / ".complete").is_file(), said

    log = train("bridle-train", "run", "micro.yaml")
    summaries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(summaries) == 4, log[-2000:]

    train("bridle-export", "export", "runs/micro/servable", "models/micro", "--name", "micro")
    manifest = json.loads((project / "models" / "micro" / "manifest.json").read_text())
    assert manifest["name"] == "micro"

    written = [p for p in project.rglob("*") if p.name != "micro.yaml"]
    assert len(written) > 20
    foreign = [p for p in written if p.stat().st_uid != owner]
    assert not foreign, f"not owned by the project's owner {owner}: {foreign[:5]}"
    unreadable = [p for p in written if not p.stat().st_mode & 0o400]
    assert not unreadable, unreadable[:5]
