"""Wall-clock timing of a call, and timing workers run in a process of their own, shared by the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def call_times(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_worker(module: str, *args: str) -> Any:
    """Run `python -m module --worker ... args` in a fresh process (so each runtime's threads, arenas and
    imports are its own) and return the JSON value its last line of output prints."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> str:
    """The 1-minute load average, to print beside a figure measured on a machine others may share."""
    return f"load avg {os.getloadavg()[0]:.1f}"
