"""bridle/service/memory.py: with the mmap threshold held, memory freed after a large block is back with
the operating system; without it (glibc's moving threshold) the same pattern keeps it resident. Each case
runs in a fresh Python, whose malloc has seen nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridle.service.memory import hold_mmap_threshold

# RssAnon kept after the pattern, in MiB: a 16 MiB block allocated and freed (glibc's threshold rises to
# it), then 80 MiB in 4 MiB blocks, a small block after them, and the 4 MiB blocks freed
PATTERN = """
import sys
from pathlib import Path
import numpy as np

def anon_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024

if sys.argv[1] == "held":
    from bridle.service.memory import hold_mmap_threshold
    assert hold_mmap_threshold()
big = np.ones(16 << 20, np.uint8)
del big
before = anon_mib()
blocks = [np.ones(4 << 20, np.uint8) for _ in range(20)]
after_them = np.ones(64 << 10, np.uint8)
del blocks
print(anon_mib() - before)
"""


def _kept_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_freed_large_blocks_leave_the_process_with_the_threshold_held() -> None:
    if not hold_mmap_threshold():
        pytest.skip("this C library has no mmap threshold to hold (not glibc)")
    moving, held = _kept_mib("moving"), _kept_mib("held")
    assert moving > 60, f"glibc's moving threshold kept only {moving:.1f} MiB: the pattern no longer shows it"
    assert held < 10, f"{held:.1f} MiB of the freed 80 MiB stayed resident with the threshold held"


@pytest.mark.parametrize("arena", [False, True])
def test_a_front_ends_features_sessions_keep_an_arena_only_when_asked(arena: bool) -> None:
    """BRIDLE_CPU_MEM_ARENA (off by default) holds in the front end's features graphs as in the engine: with
    the arena, ONNX Runtime kept the largest /features run a front end had seen."""
    from bridle.runtime.models import DEFAULT_MODELS_ROOT
    from bridle.service.engines import front_end_models
    from bridle.service.settings import Settings

    settings = Settings(model_dirs=[DEFAULT_MODELS_ROOT / "audio-digits"], cpu_mem_arena=arena)
    (model,) = front_end_models(settings).values()
    assert set(model.sessions) == {"features"}
    assert model.sessions["features"].get_session_options().enable_cpu_mem_arena is arena
