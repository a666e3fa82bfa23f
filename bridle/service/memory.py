"""Large freed blocks go back to the operating system at once, so a long-running service process's
resident size follows its load instead of its peak.

glibc's malloc serves a block of at least its mmap threshold (128 KiB at the start) with a mapping of its
own, unmapped on free. But the threshold moves: each time such a block is freed, it rises to that block's
size (up to 32 MiB). After one large upload, the next decoded signals, windows and ONNX Runtime tensors of
up to that size come from the heaps, and freed heap memory stays resident unless it happens to sit at the
top of a heap. Measured on one front end (`/features` on 8 uploads of 5 s to 300 s of audio at once, then
idle): RssAnon 64 -> 298 MB and it stayed there; with the threshold held at 128 KiB, 64 -> 88 MB. In the
10-minute soak (bench/soak.py) the surviving front end's RSS rose in steps that followed such bursts.

Setting the threshold with mallopt also turns its movement off (glibc's documented behaviour). Elsewhere
(musl, macOS) there is no such threshold to hold, and this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("bridle.service")

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_BLOCK_BYTES = 128 * 1024  # glibc's own starting threshold, kept fixed


def hold_mmap_threshold(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """From now on every block of `threshold` bytes or more is mapped on its own and unmapped when freed.
    True when the C library took the setting (glibc), False where it has no such knob."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    taken = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not taken:
        log.debug("the C library ignores mallopt(M_MMAP_THRESHOLD)")
    return taken
