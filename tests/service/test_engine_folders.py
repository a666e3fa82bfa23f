"""The supervisor's folders (bridle/service/engine_folders.py): named after their owner, and at a start those
no live process owns are removed, whatever killed their owner. (A real bridle-serve tree killed with SIGKILL
and started again: test_processes.py.)"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bridle.service.engine_folders import is_stale, make_folder, remove_stale, start_ticks


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    assert start_ticks(done.pid) is None
    return done.pid


def _folder(root: Path, name: str, metrics_pids: tuple[int, ...] = (), age_s: float = 0) -> Path:
    folder = root / name
    (folder / "metrics").mkdir(parents=True)
    (folder / "engine.sock").touch()
    for pid in metrics_pids:
        (folder / "metrics" / f"counter_{pid}.db").touch()
    if age_s:
        then = time.time() - age_s
        os.utime(folder, (then, then))
    return folder


def test_a_new_folder_names_its_live_owner_and_is_kept(tmp_path: Path) -> None:
    folder = make_folder(str(tmp_path))
    assert folder.name.startswith(f"bridle-engine-{os.getpid()}.{start_ticks(os.getpid())}-")
    assert folder.stat().st_mode & 0o777 == 0o700
    assert not is_stale(folder)
    assert remove_stale(str(tmp_path)) == [] and folder.is_dir()


def test_the_folders_of_dead_owners_are_removed_and_the_others_kept(tmp_path: Path) -> None:
    me, dead = os.getpid(), _dead_pid()
    ticks = start_ticks(me)
    live = _folder(tmp_path, f"bridle-engine-{me}.{ticks}-live")
    gone = _folder(tmp_path, f"bridle-engine-{dead}.{ticks}-gone")
    reused = _folder(tmp_path, f"bridle-engine-{me}.{ticks + 1}-reused")  # the pid now runs another process
    legacy_live = _folder(tmp_path, "bridle-engine-abc123", metrics_pids=(dead, me), age_s=3600)
    legacy_dead = _folder(tmp_path, "bridle-engine-def456", metrics_pids=(dead,), age_s=3600)
    legacy_young = _folder(tmp_path, "bridle-engine-ghi789", age_s=5)  # its supervisor may be starting
    not_a_folder = tmp_path / "bridle-engine-file"
    not_a_folder.write_text("x")
    other = _folder(tmp_path, f"another-{dead}.{ticks}-x")

    removed = remove_stale(str(tmp_path))

    assert sorted(removed) == sorted([gone, reused, legacy_dead])
    assert not any(p.exists() for p in removed)
    assert all(p.exists() for p in (live, legacy_live, legacy_young, not_a_folder, other))
