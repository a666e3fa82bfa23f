"""An engine and a front end's client in one event loop, joined by socket pairs: the engine protocol
without starting a process.

`InProcess` loads the model directories into a `LocalEngine` (real ONNX Runtime sessions), serves them
with the engine process's `Engine` (bridle/runtime/engine.py), and connects an `EngineClient` to it
through a fresh `socket.socketpair()` at each (re)connection, over a real shared-memory ring."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from pathlib import Path

import numpy as np

from bridle.runtime.batcher import BatchSpec
from bridle.runtime.client import EngineClient, EngineLink, EngineListener
from bridle.runtime.engine import Engine
from bridle.runtime.local import LocalEngine, LocalSpec
from bridle.runtime.models import LoadedModel
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from bridle.runtime.slots import RingSpec, SlotRing, slot_bytes

WAIT_S = 20.0  # what a test waits for something the link must do, at most


class InProcess:
    def __init__(
        self,
        model_dirs: list[Path],
        *,
        slots: int = 4,
        slot_rows: int = 4,
        max_batch_size: int = 4,
        max_wait_s: float = 0.0,
        listener: EngineListener | None = None,
    ) -> None:
        batching = BatchSpec(max_batch_size, max_wait_s, queue_size=64, timeout_s=60.0)
        self.spec = LocalSpec(
            model_dirs=model_dirs,
            chooser=ProviderChooser(["CPUExecutionProvider"]),
            threads=CpuThreads(intra_op=1),
            precision=["fp32"],
            batching={False: batching, True: batching},
            warmup_sizes={False: [1], True: [1]},
        )
        self.slots, self.slot_rows, self.listener = slots, slot_rows, listener
        self.served: list[asyncio.Task[None]] = []  # the engine's side of each connection
        self.engine_ends: list[asyncio.StreamWriter] = []
        self.down = False  # while set, the engine cannot be reached (connect raises OSError)

    async def __aenter__(self) -> InProcess:
        self.local = LocalEngine(self.spec)
        await self.local.load()
        self.local.start()
        await self.local.warm_up()
        assert self.local.registry is not None
        self.engine = Engine(self.local.registry)
        manifests = [m.manifest for m in self.local.registry.models.values()]
        ring = RingSpec(
            f"bridle-test-{uuid.uuid4().hex[:12]}", self.slots, slot_bytes(manifests, self.slot_rows)
        )
        self.ring = SlotRing.create(ring)
        self.client = EngineClient(
            EngineLink("unused", ring, self.slot_rows), self.listener, connect=self.connect
        )
        self.client.start()
        await asyncio.wait_for(self.client.warm_up(), WAIT_S)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()
        for task in self.served:
            task.cancel()
        await asyncio.gather(*self.served, return_exceptions=True)
        await self.engine.stop()
        self.ring.close()
        self.ring.unlink()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The client's way to the engine: a socket pair, the engine serving one end."""
        if self.down:
            raise OSError("the engine is down")
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=theirs)
        self.served.append(asyncio.create_task(self.engine.serve_front_end(reader, writer)))
        self.engine_ends.append(writer)
        return await asyncio.open_unix_connection(sock=ours)

    async def kill_engine_side(self) -> None:
        """The engine's end of the connection goes at once, unanswered, as when the engine process dies;
        until `down` is cleared, the engine cannot be reached."""
        self.down = True
        for writer in self.engine_ends:
            writer.transport.abort()
        await asyncio.gather(*self.served, return_exceptions=True)

    # ---- what the tests look at --------------------------------------------------------------
    def model(self, key: str) -> LoadedModel:
        return self.local.registry.current[key]  # type: ignore[union-attr]

    def rows(self, key: str, k: int, seed: int = 0) -> np.ndarray:
        """k random windows (k, ...) of the model's input."""
        spec = self.model(key).manifest.input
        shape = (k, *(int(d) for d in spec.shape[1:]))
        return np.random.default_rng(seed).normal(size=shape).astype(spec.dtype)

    def queued(self, key: str, graph: str = "encoder") -> int:
        """Request parts waiting in the engine's batcher of `key`'s graph."""
        return self.local.registry.batchers[(self.model(key).instance, graph)].depth  # type: ignore[union-attr]

    def free_slots(self) -> int:
        return self.client.free_slots


async def until(condition, what: str, seconds: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def raw_front_end(link: InProcess):
    """A bare stream to the engine, as a front end's socket: (reader, writer, the engine's task)."""
    ours, theirs = socket.socketpair()
    er, ew = await asyncio.open_unix_connection(sock=theirs)
    served = asyncio.create_task(link.engine.serve_front_end(er, ew))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        yield reader, writer, served
    finally:
        writer.close()
        await asyncio.gather(served, return_exceptions=True)
