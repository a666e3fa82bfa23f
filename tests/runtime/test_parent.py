"""`Parent` (bridle/runtime/parent.py): a process learns that the process that started it died, as the
engine, its spare and the front ends learn that the supervisor is gone. Real processes: a parent that
starts a child, then is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import pathlib, sys, time
from bridle.runtime.parent import Parent
parent = Parent()
gone, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
parent.on_death(lambda: gone.write_text("gone"), every_s=0.05)
ready.write_text(str(parent.alive()))
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
time.sleep(60)
"""


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_a_child_is_told_once_its_parent_is_killed(tmp_path: Path) -> None:
    gone, ready = tmp_path / "gone", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(gone), str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _wait_for(ready, 60), "the child did not start"
        assert ready.read_text() == "True"  # alive while the parent lives
        time.sleep(0.3)  # several looks of the watch
        assert not gone.exists(), "told of a death that did not happen"
        parent.kill()
        parent.wait()
        assert _wait_for(gone, 10), "the child was not told that its parent died"
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
