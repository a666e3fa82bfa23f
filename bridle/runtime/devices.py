"""One GPU per worker process: each worker claims a numbered slot, slot i runs on `device_ids[i % n]`.

uvicorn starts its workers without telling them their index, and restarts a worker that died. So the
parent (`bridle-serve` with several workers) makes a folder and names it in `BRIDLE_DEVICE_SLOTS`; each
worker takes the lowest slot whose lock file it can lock (`flock`, held for the life of the process).
A worker that dies frees its slot, and its replacement takes the same GPU. With one process (or no
folder) the first id is used.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger("bridle.service")

SLOTS_ENV = "BRIDLE_DEVICE_SLOTS"
_held: list[IO[bytes]] = []  # the lock of this process's slot, open while it lives


def nvidia_gpu_present() -> bool:
    """Whether this machine (or container) shows an NVIDIA GPU's device node: a cheap look before any
    session starts (ONNX Runtime lists CUDA wherever its GPU package is installed, GPU or not)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def claim_slot(folder: Path) -> int:
    """The lowest slot number in `folder` no other live process holds; held until this process ends."""
    for slot in itertools.count():
        handle = (folder / f"slot-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return slot
    raise AssertionError("unreachable")


def device_for_process(device_ids: list[int]) -> int:
    """This process's GPU: its slot's id when the parent spread several over the workers, else the first."""
    folder = os.environ.get(SLOTS_ENV)
    if len(device_ids) == 1 or not folder:
        if len(device_ids) > 1:
            log.warning(
                "BRIDLE_DEVICE_ID lists %s, but one process serves: GPU %d", device_ids, device_ids[0]
            )
        return device_ids[0]
    slot = claim_slot(Path(folder))
    device = device_ids[slot % len(device_ids)]
    log.info("worker %d (slot %d) runs on GPU %d", os.getpid(), slot, device)
    return device
