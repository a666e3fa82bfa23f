"""A front end's side of the engine process: windows into its shared-memory ring, outputs back.

`EngineClient` connects to the engine's Unix socket (and keeps trying while the engine is down or
warming up: it listens only once warm), says hello with its ring (bridle/runtime/slots.py), then runs request
parts: each takes a free slot, has its rows copied in, is named to the engine in a small message
(bridle/runtime/wire.py) and gets its outputs copied out of the slot when the answer comes. The slot is free
again only when the engine has answered (or is gone), so the engine never writes into a slot that
another part uses. When the connection ends (the engine died) every part in flight fails at once with
`EngineError("engine_unavailable")` (the service answers 503 + Retry-After), `ready` is False and the
client reconnects to the restarted engine.

The engine also tells the front end which models it serves, by key, each with the instance id a run
names it by: in its hello, and in a reload's `prepare` (load the new manifests, answer `prepared`),
`commit` (switch, answer `committed`) and `abort`. The front end answers `release` once its requests on
the replaced loads are done (bridle/runtime/engine.py). `EngineListener` is what the front end does with each.

It is one of the two `InferenceEngine`s (bridle/runtime/interface.py): the front end uses it as the
one-process service uses its `LocalEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridle.runtime import tracing, wire
from bridle.runtime.errors import EngineError
from bridle.runtime.interface import InferenceEngine
from bridle.runtime.models import LoadedModel
from bridle.runtime.slots import RingSpec, SlotRing
from bridle.runtime.wire import (
    Abort,
    Cancel,
    Commit,
    Committed,
    Done,
    Failed,
    Hello,
    Message,
    ModelInfo,
    Prepare,
    Prepared,
    Release,
    Reload,
    Reloaded,
    Run,
    Welcome,
)

log = logging.getLogger("bridle.runtime")
RECONNECT_S = 0.1
# how a client reaches the engine: a stream to it (OSError while it is not there)
Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass(frozen=True)
class EngineLink:
    """Where a front end finds the engine and its own ring (given by the supervisor)."""

    socket_path: str
    ring: RingSpec
    slot_rows: int  # rows per slot: a request's windows go in parts of at most this many
    retry_after_s: int = 1


class EngineListener:
    """What a front end does when the engine tells it of its models (no-ops here)."""

    async def hello(self, models: dict[str, ModelInfo]) -> None:
        """The models the engine serves (at each connection), by key: instance, directory, providers..."""

    async def prepare(self, seq: int, models: dict[str, ModelInfo]) -> str | None:
        """Reload `seq`: ready the new set (its manifests); None, or why it cannot."""
        return None

    def commit(self, seq: int) -> None:
        """Reload `seq`: new requests go to the prepared set now."""

    def abort(self, seq: int) -> None:
        """Reload `seq` failed elsewhere: forget what was prepared."""


@dataclass
class _Part:
    future: asyncio.Future[dict[str, np.ndarray]]
    slot: int


class EngineClient(InferenceEngine):
    def __init__(
        self,
        link: EngineLink,
        listener: EngineListener | None = None,
        load: Callable[[], dict[str, LoadedModel]] | None = None,
        connect: Connect | None = None,
    ) -> None:
        """`listener` hears of the engine's models: at each (re)connection and in each reload; `load`
        loads what this process holds of them itself (a front end's manifests and features graph);
        `connect` reaches the engine (None: its Unix socket, `link.socket_path`)."""
        self.link = link
        self._connect = connect or (lambda: asyncio.open_unix_connection(link.socket_path))
        self.ring = SlotRing.attach(link.ring)
        self.listener = listener or EngineListener()
        self._load = load
        self.on_gpu = False  # this process runs no graph of the engine's
        self._reloads: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(link.ring.slots):
            self._free.put_nowait(slot)
        self._parts: dict[int, _Part] = {}
        self._ids = itertools.count()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.connected.is_set()

    @property
    def free_slots(self) -> int:
        """Slots of the ring that hold no request part (a part waits for one when there are none)."""
        return self._free.qsize()

    @property
    def in_flight(self) -> int:
        """Request parts sent to the engine and not answered yet."""
        return len(self._parts)

    async def load(self) -> dict[str, LoadedModel]:
        return await asyncio.to_thread(self._load) if self._load is not None else {}

    def start(self) -> None:
        """Connect to the engine, and again whenever the connection ends."""
        self._task = asyncio.get_running_loop().create_task(self._connect_forever(), name="engine-client")

    async def warm_up(self) -> None:
        """The engine process warms itself up and listens only once warm: this waits for it."""
        await self.connected.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.ring.close()

    # ---- the connection ----------------------------------------------------------------------
    async def _connect_forever(self) -> None:
        while True:
            try:
                reader, writer = await self._connect()
            except OSError:  # not there yet, or a dead engine's socket file
                await asyncio.sleep(RECONNECT_S)
                continue
            except Exception:  # anything else would end this task, and the front end never be ready
                log.exception("cannot connect to the engine at %r", self.link.socket_path)
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                writer.write(wire.encode(Hello(self.link.ring, self.link.slot_rows)))
                welcome = await wire.read(reader)
                if isinstance(welcome, Welcome):
                    await self.listener.hello(welcome.models)
                    self._writer = writer
                    self.connected.set()
                    log.info("connected to the engine: %s", sorted(welcome.models))
                    while (message := await wire.read(reader)) is not None:
                        self._receive(message, writer)
                    log.warning("the engine is gone: failing its work in flight, reconnecting")
            finally:
                self.connected.clear()
                self._writer = None
                writer.close()
                self._fail_all()
            await asyncio.sleep(RECONNECT_S)

    def _receive(self, message: Message, writer: asyncio.StreamWriter) -> None:
        """A message from the engine: a run's answer, or a reload's."""
        match message:
            case Done() | Failed():
                self._answer(message)
            case Prepare(seq=seq, models=models):
                self._spawn(self._prepare(seq, models, writer))
            case Commit(seq=seq):
                self.listener.commit(seq)
                writer.write(wire.encode(Committed(seq)))
            case Abort(seq=seq):
                self.listener.abort(seq)
            case Reloaded(id=request):
                waiting = self._reloads.pop(request, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message.answer())
            case _:
                log.warning("ignored an unexpected %r message from the engine", message.op)

    def _answer(self, answer: Done | Failed) -> None:
        part = self._parts.pop(answer.id, None)
        if part is None:
            return
        try:
            if part.future.done():  # cancelled: nobody reads the outputs
                return
            if isinstance(answer, Done):
                part.future.set_result(
                    {  # copied out: the slot is reused once this returns
                        name: self.ring.array(part.slot, offset, dtype, tuple(shape)).copy()
                        for name, dtype, shape, offset in answer.outputs
                    }
                )
            else:
                part.future.set_exception(EngineError(answer.code, answer.message, answer.retry_after_s))
        finally:
            self._free.put_nowait(part.slot)

    async def _prepare(self, seq: int, models: dict[str, ModelInfo], writer: asyncio.StreamWriter) -> None:
        try:
            error = await self.listener.prepare(seq, models)
        except Exception as e:  # the engine must hear of it, or it waits for the answer in vain
            log.exception("cannot prepare reload %d", seq)
            error = f"{type(e).__name__}: {e}"
        if not writer.is_closing():
            writer.write(wire.encode(Prepared(seq, error)))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> dict[str, Any]:
        """Have the engine reload its models (bridle/runtime/engine.py `Engine.reload`); its answer."""
        writer = self._writer
        if writer is None:
            raise self._unavailable()
        request = next(self._ids)
        answer = self._reloads[request] = asyncio.get_running_loop().create_future()
        writer.write(wire.encode(Reload(request)))
        return await answer

    def release(self, seq: int) -> None:
        """Reload `seq`: this front end's requests on the loads it replaced are done."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.encode(Release(seq)))

    def _fail_all(self) -> None:
        """The engine is gone: every part in flight fails now, and its slot is free (nothing writes it)."""
        reloads, self._reloads = self._reloads, {}
        for waiting in reloads.values():
            if not waiting.done():
                waiting.set_exception(self._unavailable())
        parts, self._parts = self._parts, {}
        for part in parts.values():
            if not part.future.done():
                part.future.set_exception(self._unavailable())
            self._free.put_nowait(part.slot)

    def _unavailable(self) -> EngineError:
        return EngineError(
            "engine_unavailable", "the inference engine is restarting; retry later", self.link.retry_after_s
        )

    # ---- requests ----------------------------------------------------------------------------
    async def submit(
        self, model: str, graph: str, rows: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `graph` of `model` on `rows` (k, ...) in the engine; the `outputs` named, each (k, ...)."""
        n = self.link.slot_rows
        # every part's outcome is collected, so a part that fails beside another leaves no exception
        # unretrieved; the first failure is the caller's
        parts = await asyncio.gather(
            *(
                tracing.inside(
                    tracing.client_span("engine"), self._submit, model, graph, rows[i : i + n], outputs
                )
                for i in range(0, len(rows), n)
            ),
            return_exceptions=True,
        )
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _submit(
        self, model: str, graph: str, rows: np.ndarray, outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        if self._writer is None:
            raise self._unavailable()
        slot = await self._free.get()
        writer = self._writer
        # it went while this part waited for a slot, or its socket is closing and the reader has not
        # seen the end yet (the engine was killed a moment ago)
        if writer is None or writer.is_closing():
            self._free.put_nowait(slot)
            raise self._unavailable()
        self.ring.array(slot, 0, rows.dtype.name, rows.shape)[...] = rows
        part_id = next(self._ids)
        part = _Part(asyncio.get_running_loop().create_future(), slot)
        self._parts[part_id] = part
        wanted = list(outputs) if outputs is not None else None
        try:
            writer.write(wire.encode(Run(part_id, slot, model, graph, len(rows), wanted, tracing.carrier())))
        except (RuntimeError, ConnectionError):  # the transport closed under the write
            del self._parts[part_id]
            self._free.put_nowait(slot)
            raise self._unavailable() from None
        try:
            return await part.future
        except asyncio.CancelledError:
            # the client left: the engine drops it; the slot stays taken until the engine answers
            if part_id in self._parts and not writer.is_closing():
                writer.write(wire.encode(Cancel(part_id)))
            raise
