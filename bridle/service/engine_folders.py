"""The supervisor's private folder (`$TMPDIR/bridle-engine-*`: the engine's Unix socket and the metrics
files), named after its owner, and the removal of folders no live process owns.

A folder is named `bridle-engine-<pid>.<start>-<random>`: the supervisor's pid and its start time in clock
ticks after boot (`/proc/<pid>/stat`, field 22), so a pid reused by another process does not keep a dead
supervisor's folder alive. A supervisor killed with SIGKILL, with its engine (a container's kill, the OOM
killer), leaves its folder behind; the next start (`remove_stale`) removes every `bridle-engine-*` of this
user whose owner is gone. A folder of the older unnamed form (`bridle-engine-<random>`) is stale when
no process whose pid its metrics files name (prometheus_client writes `<kind>_<pid>.db`) still runs, and
it is more than `LEGACY_GRACE_S` old (a supervisor of that form names no process before its children
start).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bridle.supervisor")

PREFIX = "bridle-engine-"
NAMED = re.compile(rf"{PREFIX}(\d+)\.(\d+)-")
METRICS_PID = re.compile(r"_(\d+)\.db$")
LEGACY_GRACE_S = 60.0


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), or None when it does not run (a zombie counts as
    gone) or there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])  # field 3 is fields[0]; field 22, fields[19]


def make_folder(root: str | None = None) -> Path:
    """A new private folder for this process (mode 0700), named after it."""
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}.{start_ticks(pid) or 0}-", dir=root))


def _runs(pid: int) -> bool:
    return start_ticks(pid) is not None


def is_stale(folder: Path, now: float | None = None) -> bool:
    """Whether no live process owns `folder` (see the module's docstring)."""
    named = NAMED.match(folder.name)
    if named is not None:
        pid, started = int(named.group(1)), int(named.group(2))
        return start_ticks(pid) != started
    pids = {int(m.group(1)) for p in (folder / "metrics").glob("*.db") if (m := METRICS_PID.search(p.name))}
    if any(_runs(pid) for pid in pids):
        return False
    try:
        age = (time.time() if now is None else now) - folder.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > LEGACY_GRACE_S


def remove_stale(root: str | None = None) -> list[Path]:
    """Remove the `bridle-engine-*` folders of this user in `root` (the temporary folder) that no live
    process owns; the folders removed."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    uid = os.getuid()
    for folder in base.glob(f"{PREFIX}*"):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != uid:
                continue
        except FileNotFoundError:
            continue
        if is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    if removed:
        log.info("removed %d stale engine folder(s) no live process owned: %s", len(removed), removed)
    return removed
