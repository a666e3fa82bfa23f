"""A ring of fixed-size slots in `multiprocessing.shared_memory`: windows in and outputs back between a
front-end process and the engine process, without pickling arrays.

The supervisor creates one ring per front-end process (`SlotRing.create`) and unlinks it when that front
end is gone or the server stops, so no process that may be killed owns a segment; the front end and the
engine attach to it (`SlotRing.attach`). A slot holds one request part: its input rows at offset 0, then
the outputs the engine writes back, each at a 64-byte aligned offset. Which slots are free is the front
end's business (bridle/runtime/client.py); the engine touches only the slots it is asked to.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from math import prod
from multiprocessing import shared_memory

import numpy as np

from bridle.model.manifest import Manifest

log = logging.getLogger("bridle.runtime")
ALIGN = 64
ENGINE_GRAPHS = ("encoder", "tokenizer")  # the graphs the engine runs (features.onnx stays in the front end)


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def row_bytes(dtype: str, shape: list) -> int:
    """Bytes of one batch row of a tensor of `shape` (batch first; the rest must be fixed)."""
    return np.dtype(dtype).itemsize * prod(int(d) for d in shape[1:])


def slot_bytes(manifests: list[Manifest], rows: int) -> int:
    """The slot size that holds `rows` windows of any of these models and every output of any graph."""
    need = 0
    for m in manifests:
        inputs = aligned(rows * row_bytes(m.input.dtype, m.input.shape))
        for graph in ENGINE_GRAPHS:
            outputs = sum(aligned(rows * row_bytes(o.dtype, o.shape)) for o in m.files[graph].outputs)
            need = max(need, inputs + outputs)
    return need


@dataclass(frozen=True)
class RingSpec:
    """What a process needs to attach to a ring: its name and layout (small, crosses the pipe)."""

    name: str
    slots: int
    slot_bytes: int


class SlotRing:
    """`slots` slots of `slot_bytes` each in one shared-memory segment."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory) -> None:
        self.spec = spec
        self._shm = shm

    @classmethod
    def create(cls, spec: RingSpec) -> SlotRing:
        return cls(
            spec, shared_memory.SharedMemory(spec.name, create=True, size=spec.slots * spec.slot_bytes)
        )

    @classmethod
    def attach(cls, spec: RingSpec) -> SlotRing:
        shm = shared_memory.SharedMemory(spec.name)
        if shm.size < spec.slots * spec.slot_bytes:
            shm.close()
            raise ValueError(f"shared memory {spec.name!r} holds {shm.size} bytes, not {spec.slots} slots")
        return cls(spec, shm)

    def array(self, slot: int, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """A view of slot `slot` from `offset`: an array of `dtype` and `shape` living in shared memory."""
        dt = np.dtype(dtype)
        size = dt.itemsize * prod(shape)
        if not 0 <= slot < self.spec.slots or offset + size > self.spec.slot_bytes:
            raise ValueError(f"{shape} {dtype} at {offset} does not fit slot {slot} of {self.spec}")
        return np.ndarray(shape, dt, buffer=self._shm.buf, offset=slot * self.spec.slot_bytes + offset)

    def close(self) -> None:
        """Unmap it here; while an array still views it (a run in progress) the mapping stays until that
        array is gone."""
        try:
            self._shm.close()
        except BufferError:
            log.debug("shared memory %s still viewed; unmapped when the views go", self.spec.name)

    def unlink(self) -> None:
        """Remove the segment's name (the creator does this once); the memory goes with the last mapping."""
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
