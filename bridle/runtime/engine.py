"""The engine process: one per device; it loads the models once and runs the dynamic batchers for every
front-end process.

`run_engine(spec)` is the process's entry point (bridle/service/supervisor.py starts it). Its `LocalEngine`
(bridle/runtime/local.py) loads the model directories (one ONNX Runtime session per graph, shared by the
concurrent runs), starts a `Batcher` per model graph and warms every graph up; only then it listens on
`spec.socket_path`: a front end that can connect talks to
a warm engine. Each front end says hello with its shared-memory ring (bridle/runtime/slots.py), then sends
small run and cancel messages (bridle/runtime/wire.py); the engine views the request's rows in the ring (no
copy), submits them to the graph's batcher with everyone else's, writes the outputs back into the same slot
and answers with their names, shapes and offsets. A front end that goes away has its queued work cancelled.
SIGTERM, or its parent's death, stops the engine. A spare (`run_engine(spec, go=event)`) loads and warms up
the same way, then waits for `go` before it listens: it takes over the socket the moment the engine before it
dies.

Reloads (SIGHUP, or a front end's `Reload` from `POST /admin/reload`): the engine reads the
model directories again and loads and warms what is new or changed beside what serves
(bridle/runtime/registry.py); it sends every front end `prepare` with the new set (each loads the new
manifests), then `commit` to all of them at once (each answers `committed`, and the reload answers
once all have), or `abort` when one failed. Runs name a load by its
instance id, so requests in flight finish on the old load while new ones reach the new; the old load
stops once every front end has sent `release` (its requests on it are done). A failed reload keeps what
serves and answers why. A spare reloads on SIGHUP too.

A model that does not load exits with `EXIT_BAD_MODELS`, which the supervisor takes as fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridle.runtime import tracing, wire
from bridle.runtime.errors import EngineError, ModelLoadError
from bridle.runtime.local import HooksFor, LocalEngine, LocalSpec
from bridle.runtime.models import LoadedModel
from bridle.runtime.parent import Parent
from bridle.runtime.registry import Registry, Staged
from bridle.runtime.slots import SlotRing, aligned, slot_bytes
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
    Placed,
    Prepare,
    Prepared,
    Release,
    Reload,
    Reloaded,
    Run,
    Welcome,
)

log = logging.getLogger("bridle.engine")
EXIT_BAD_MODELS = 2
TAKEOVER_CHECK_S = 1.0  # how often a waiting spare checks whether it should stop
PREPARE_TIMEOUT_S = 60.0  # a reload: how long the front ends have to load the new manifests
RELEASE_TIMEOUT_S = 300.0  # a reload: how long a front end's requests may hold the loads it replaced


@dataclass(frozen=True)
class EngineSpec:
    """Everything the engine process needs (picklable: it crosses to the spawned process once)."""

    local: LocalSpec  # the models, their devices, batching and warm-up
    socket_path: str


def describe(model: LoadedModel) -> ModelInfo:
    """A load as the engine tells the front ends of it (welcome, prepare)."""
    return ModelInfo(
        instance=model.instance,
        directory=str(model.directory),
        version=model.version,
        fingerprint=model.fingerprint,
        providers=model.providers,
        provider_options=model.sessions["encoder"].get_provider_options(),
    )


class _Link:
    """One front end's connection: its ring, and where a reload stands with it."""

    def __init__(self, ring: SlotRing, rows: int, writer: asyncio.StreamWriter) -> None:
        self.ring, self.rows, self.writer = ring, rows, writer
        self.prepared: dict[int, asyncio.Future[str | None]] = {}  # reload -> None, or why it failed
        self.committed: dict[int, asyncio.Future[None]] = {}  # reload -> it switched
        self.released: dict[int, asyncio.Event] = {}  # reload -> its replaced loads are idle here
        self.closed = asyncio.Event()

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))


class Engine:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.links: dict[int, _Link] = {}
        self._link_ids = itertools.count()
        self._reloads = itertools.count(1)
        self.reloading = asyncio.Lock()  # one reload at a time; a front end's hello waits for it
        self._retiring: set[asyncio.Task[None]] = set()

    def welcome(self) -> Welcome:
        return Welcome({key: describe(m) for key, m in self.registry.current.items()})

    async def serve_front_end(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One front end's connection: its hello, then its runs (and reload messages) until it closes."""
        hello = await wire.read(reader)
        if not isinstance(hello, Hello):
            writer.close()
            return
        try:
            ring = SlotRing.attach(hello.ring)
        except (OSError, ValueError) as e:  # no such segment, or a smaller one than it says
            log.error("a front end's ring cannot be attached: %s", e)
            writer.close()
            return
        link = _Link(ring, hello.rows, writer)
        link_id = next(self._link_ids)
        async with self.reloading:  # a reload prepares and switches exactly the front ends it saw
            writer.write(wire.encode(self.welcome()))
            self.links[link_id] = link
        runs: dict[int, asyncio.Task[None]] = {}
        try:
            while (message := await wire.read(reader)) is not None:
                self._receive(message, link, runs)
        finally:  # the front end is gone: its work goes too
            del self.links[link_id]
            link.closed.set()
            for waiting in [*link.prepared.values(), *link.committed.values()]:
                if not waiting.done():  # it takes the new set from the hello when it is back
                    waiting.set_result(None)
            for task in list(runs.values()):
                task.cancel()
            await asyncio.gather(*runs.values(), return_exceptions=True)
            writer.close()
            link.ring.close()

    def _receive(self, message: Message, link: _Link, runs: dict[int, asyncio.Task[None]]) -> None:
        """A message from a front end: a run (tracked in `runs` by id until it ends), its cancel, or
        a reload's."""
        match message:
            case Run(id=run_id, trace=trace):
                # with a trace context (traces on, the request sampled): the run is one span of that trace
                span = tracing.continued(trace, "engine.run", _run_attributes(message) if trace else None)
                task = asyncio.create_task(tracing.inside(span, self._run, message, link.ring, link.writer))
                runs[run_id] = task
                task.add_done_callback(lambda _: runs.pop(run_id, None))
            case Cancel(id=run_id) if (task := runs.get(run_id)) is not None:
                task.cancel()
            case Prepared(seq=seq, error=error) if (done := link.prepared.pop(seq, None)) is not None:
                if not done.done():
                    done.set_result(error)
            case Committed(seq=seq) if (switched := link.committed.pop(seq, None)) is not None:
                if not switched.done():
                    switched.set_result(None)
            case Release(seq=seq) if (idle := link.released.get(seq)) is not None:
                idle.set()
            case Reload(id=request):
                task = asyncio.create_task(self._answer_reload(request, link))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _run(self, m: Run, ring: SlotRing, writer: asyncio.StreamWriter) -> None:
        """View the rows in the slot, run them in the graph's batch, write the outputs after them."""
        answer: Done | Failed
        try:
            model = self.registry.models.get(m.model)
            if model is None:
                raise EngineError("unknown_model", f"the engine holds no model {m.model!r}")
            spec = model.manifest.input
            shape = (m.rows, *(int(d) for d in spec.shape[1:]))
            rows = ring.array(m.slot, 0, spec.dtype, shape)  # (k, ...) in shared memory
            outputs = await self.registry.batchers[(m.model, m.graph)].submit(rows, m.outputs)
            offset = aligned(rows.nbytes)
            placed = []
            for name, array in outputs.items():
                ring.array(m.slot, offset, array.dtype.name, array.shape)[...] = array
                placed.append(Placed(name, array.dtype.name, list(array.shape), offset))
                offset += aligned(array.nbytes)
            answer = Done(m.id, placed)
        except asyncio.CancelledError:
            answer = Failed(m.id, "cancelled", "cancelled")
        except EngineError as e:
            answer = Failed(m.id, e.code, e.message, e.retry_after_s)
        except Exception as e:  # a bad message or a slot too small: that request fails, not the engine
            log.exception("run %s failed", m.id)
            answer = Failed(m.id, "engine_error", str(e))
        if isinstance(answer, Failed):
            tracing.failed(answer.code, answer.message)
        if not writer.is_closing():
            writer.write(wire.encode(answer))

    # ---- reloads -----------------------------------------------------------------------------
    async def _answer_reload(self, request: int, link: _Link) -> None:
        result = await self.reload()
        link.send(Reloaded(request, **result))

    async def reload(self) -> dict[str, Any]:
        """Read the model directories again; load and warm what is new or changed beside what serves;
        have every front end load the new manifests; then switch them all. The loads replaced are
        stopped once every front end says its requests on them have finished. A failure anywhere keeps
        what serves, and the answer says why: {"ok": False, "message", "models"}."""
        async with self.reloading:
            serving = sorted(self.registry.current)
            try:
                staged = await self.registry.stage()
            except ModelLoadError as e:
                log.error("reload failed, still serving %s: %s", serving, e)
                return {"ok": False, "message": str(e), "models": serving}
            if not staged.changed:
                log.info("reload: nothing changed (%s)", ", ".join(serving))
                return {"ok": True, **staged.summary()}
            links = list(self.links.values())
            seq = next(self._reloads)
            try:
                self._check_rings(links, staged.added)
                await self._prepare(links, seq, staged)
            except ModelLoadError as e:
                for link in links:
                    link.send(Abort(seq))
                await self.registry.discard(staged.added)
                log.error("reload failed, still serving %s: %s", serving, e)
                return {"ok": False, "message": str(e), "models": serving}
            self.registry.commit(staged)
            loop = asyncio.get_running_loop()
            for link in links:
                link.released[seq] = asyncio.Event()
                link.committed[seq] = loop.create_future()
                link.send(Commit(seq))
            # the answer once every front end has switched: a request sent after it reaches the new set
            switched = [link.committed[seq] for link in links]
            if switched and not await _within(asyncio.gather(*switched), PREPARE_TIMEOUT_S):
                log.warning("reload: a front end did not confirm the switch within %.0f s", PREPARE_TIMEOUT_S)
            for link in links:
                link.committed.pop(seq, None)
            summary = staged.summary()
            log.info("reload: serving %s (loaded %s)", summary["models"], summary["loaded"])
            if staged.removed:
                task = asyncio.create_task(self._retire(links, seq, staged.removed))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return {"ok": True, **summary}

    def _check_rings(self, links: list[_Link], added: list[LoadedModel]) -> None:
        """The front ends' rings were sized for the models at the start: a new one must fit in them."""
        for link in links:
            need = slot_bytes([m.manifest for m in added], link.rows)
            if need > link.ring.spec.slot_bytes:
                raise ModelLoadError(
                    f"{', '.join(m.key for m in added)} need {need} bytes per request slot and the front "
                    f"ends' slots hold {link.ring.spec.slot_bytes} (sized at the start): restart bridle-serve"
                )

    async def _prepare(self, links: list[_Link], seq: int, staged: Staged) -> None:
        loop = asyncio.get_running_loop()
        models = {key: describe(m) for key, m in staged.current.items()}
        waits = []
        for link in links:
            link.prepared[seq] = loop.create_future()
            waits.append(link.prepared[seq])
            link.send(Prepare(seq, models))
        try:
            errors = await asyncio.wait_for(asyncio.gather(*waits), PREPARE_TIMEOUT_S)
        except TimeoutError:
            raise ModelLoadError(
                f"a front end did not load the new manifests within {PREPARE_TIMEOUT_S:.0f} s"
            ) from None
        finally:
            for link in links:
                link.prepared.pop(seq, None)
        if failed := [e for e in errors if e is not None]:
            raise ModelLoadError(f"a front end cannot load the new models: {failed[0]}")

    async def _retire(self, links: list[_Link], seq: int, removed: list[LoadedModel]) -> None:
        """Stop the replaced loads once each front end has released them (or gone)."""

        async def released(link: _Link) -> None:
            idle = asyncio.ensure_future(link.released[seq].wait())
            closed = asyncio.ensure_future(link.closed.wait())
            await asyncio.wait([idle, closed], return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            closed.cancel()
            link.released.pop(seq, None)

        done = await asyncio.gather(
            *(asyncio.wait_for(released(link), RELEASE_TIMEOUT_S) for link in links), return_exceptions=True
        )
        if any(isinstance(d, TimeoutError) for d in done):
            log.warning("reload: a front end still held the replaced models after %.0f s", RELEASE_TIMEOUT_S)
        await self.registry.discard(removed)
        log.info("reload: unloaded %s", ", ".join(sorted(m.instance for m in removed)))

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for batcher in list(self.registry.batchers.values()):
            await batcher.stop()


async def serve(spec: EngineSpec, hooks: HooksFor | None = None, go: Any | None = None) -> None:
    """Load, warm up, listen; until SIGTERM or the parent's death. `hooks(batch spec)` gives what each
    batcher reports to (the caller's metrics). With `go` (a multiprocessing Event), a spare: loaded and
    warm, it listens only once `go` is set (the engine before it died). SIGHUP reloads the models
    (`Engine.reload`), in a spare too."""
    loop = asyncio.get_running_loop()
    reload_wanted = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # the supervisor starts us with it blocked
    local = LocalEngine(spec.local, hooks)  # its reloads are `Engine.reload`'s, with the front ends
    await local.load()
    local.start()
    assert local.registry is not None
    engine = Engine(local.registry)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = Parent()

    async def reloads() -> None:
        while True:
            await reload_wanted.wait()
            reload_wanted.clear()
            await engine.reload()

    try:
        await local.warm_up()
        reloader = asyncio.create_task(reloads())
        if go is not None:
            log.info("engine spare ready (pid %d): waiting to take over", os.getpid())
            # a thread blocks on the event (no polling: the spare idles at ~0 CPU) and wakes the moment
            # it is set; every TAKEOVER_CHECK_S it looks whether the spare should stop instead
            while not await asyncio.to_thread(go.wait, TAKEOVER_CHECK_S):
                if stop.is_set() or not parent.alive():
                    return
        if not spec.socket_path.startswith("\0"):  # a file path (not an abstract socket's name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec.socket_path)  # an engine before this one died and left it
        server = await asyncio.start_unix_server(engine.serve_front_end, path=spec.socket_path)
        log.info(
            "engine ready (pid %d): %s",
            os.getpid(),
            ", ".join(f"{n} ({m.providers[0]})" for n, m in local.registry.current.items()),
        )
        async with server:
            while not stop.is_set() and parent.alive():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        reloader.cancel()
    finally:
        await engine.stop()


def _run_attributes(run: Run) -> dict[str, Any]:
    """What an `engine.run` span says of its run."""
    return {"bridle.model": run.model, "bridle.graph": run.graph, "bridle.rows": run.rows}


async def _within(work: Any, seconds: float) -> bool:
    """Whether `work` finished within `seconds`."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        return False
    return True


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (uvicorn's `loop="auto"` picks it for the front ends
    too): the engine's loop wakes for every message and every finished batch, and uvloop's wake-ups
    cost a fraction of the selector loop's. None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_engine(spec: EngineSpec, hooks: HooksFor | None = None, go: Any | None = None) -> None:
    """The engine process's entry point (a spare's with `go`: `serve`); exits `EXIT_BAD_MODELS` when a
    model does not load."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(spec, hooks, go))
    except ModelLoadError as e:
        log.error("the engine cannot load the models: %s", e)
        sys.exit(EXIT_BAD_MODELS)
