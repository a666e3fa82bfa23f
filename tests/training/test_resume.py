"""A run killed with SIGKILL mid-stage continues with --resume to the same step counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training_helpers import MICRO, REPO, micro_overrides

from bridle.model.checkpoint import load_servable
from bridle.training.recipe import load_recipe
from bridle.training.state import load_stage

STEPS = ["stages.0.steps=400", "checkpoint_every=4", "stages.0.log_every=4"]


def _command(overrides: list[str], resume: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bridle.training.cli",
        "run",
        str(MICRO),
        *overrides,
        *(["--resume"] if resume else []),
    ]


def test_resume_after_sigkill(tmp_path: Path) -> None:
    overrides = [*micro_overrides("image", tmp_path), *STEPS]
    recipe = load_recipe(MICRO, overrides)
    first = Path(recipe.out_dir) / recipe.stage_name(0) / "checkpoint" / "config.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        _command(overrides, False), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.is_file(), "no checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed = load_stage(first.parent.parent)
    assert killed is not None and not killed.done and 0 < killed.step < 400

    done = subprocess.run(_command(overrides, True), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for index, spec in enumerate(recipe.stages):
        state = load_stage(Path(recipe.out_dir) / recipe.stage_name(index))
        assert state is not None and state.done and state.step == spec.steps
        # the logged steps are exactly those of an uninterrupted run
        assert state.extra["history"]["step"] == list(range(spec.log_every, spec.steps + 1, spec.log_every))
    servable = load_servable(Path(recipe.out_dir) / "servable")
    assert servable.provenance["step"] == recipe.stages[-1].steps
