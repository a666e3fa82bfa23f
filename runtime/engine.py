"""The engine process: one per device; it loads the models once and runs the dynamic batchers for every
front-end process.

`run_engine(spec)` is the process's entry point (service/supervisor.py starts it). It loads the model
directories (one ONNX Runtime session per graph, shared by the concurrent runs), starts a `Batcher` per
model graph, warms every graph up and only then listens on `spec.socket_path`: a front end that can
connect talks to a warm engine. Each front end says hello with its shared-memory ring (runtime/slots.py),
then sends small run and cancel messages (runtime/wire.py); the engine views the request's rows in the
ring (no copy), submits them to the graph's batcher with everyone else's, writes the outputs back into
the same slot and answers with their names, shapes and offsets. A front end that goes away has its
queued work cancelled. SIGTERM, or its parent's death, stops the engine. A spare (`run_engine(spec,
go=event)`) loads and warms up the same way, then waits for `go` before it listens: it takes over the
socket the moment the engine before it dies.

A model that does not load exits with `EXIT_BAD_MODELS`, which the supervisor takes as fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import wire
from runtime.batcher import Batcher, BatcherHooks
from runtime.errors import EngineError, ModelLoadError
from runtime.models import LoadedModel, load_models
from runtime.sessions import CPU, CpuThreads, ProviderChooser
from runtime.slots import ENGINE_GRAPHS, RingSpec, SlotRing, aligned

log = logging.getLogger("bridle.engine")
EXIT_BAD_MODELS = 2
TAKEOVER_CHECK_S = 1.0  # how often a waiting spare checks whether it should stop


# what the caller's metrics give each model graph's batcher, from the batching in force on the device
HooksFor = Callable[["BatchSpec"], Callable[[str, str], BatcherHooks]]


@dataclass(frozen=True)
class BatchSpec:
    """A graph batcher's settings (service/settings.py's batching knobs)."""

    max_batch_size: int
    max_wait_s: float
    queue_size: int
    timeout_s: float
    retry_after_s: int
    concurrent_runs: int


@dataclass(frozen=True)
class EngineSpec:
    """Everything the engine process needs (picklable: it crosses to the spawned process once)."""

    model_dirs: list[Path]
    chooser: ProviderChooser
    threads: CpuThreads
    precision: list[str]
    batching: dict[bool, BatchSpec]  # by "the models run on a GPU"
    warmup_sizes: dict[bool, list[int]]  # likewise; largest first
    socket_path: str


def start_batchers(
    models: dict[str, LoadedModel], batch: BatchSpec, hooks: Callable[[str, str], Any] | None = None
) -> dict[tuple[str, str], Batcher]:
    """A started batcher per model graph (in the running event loop); `hooks(model, graph)` gives each
    its `BatcherHooks`."""
    batchers = {}
    for name, model in models.items():
        for graph in ENGINE_GRAPHS:
            batcher = Batcher(
                run=lambda signal, outputs, mdl=model, g=graph: mdl.run(g, signal, outputs),
                name=f"{name}/{graph}",
                max_batch_size=batch.max_batch_size,
                max_wait_s=batch.max_wait_s,
                queue_size=batch.queue_size,
                timeout_s=batch.timeout_s,
                retry_after_s=batch.retry_after_s,
                hooks=hooks(name, graph) if hooks is not None else None,
                concurrent_runs=batch.concurrent_runs,
            )
            batcher.start()
            batchers[(name, graph)] = batcher
    return batchers


async def warm_up(
    batchers: dict[tuple[str, str], Batcher], models: dict[str, LoadedModel], sizes: list[int]
) -> None:
    """Every graph runs the batch `sizes` (largest first) on each thread of its batcher, the threads at
    once: kernels, threads and the memory arena are ready before the first request."""
    for (name, graph), batcher in batchers.items():
        model = models[name]
        full = model.dummy_batch(max(sizes))  # (max, ...); each size is a view of its first rows

        def work(model: LoadedModel = model, graph: str = graph, full: np.ndarray = full) -> None:
            for batch in sizes:
                model.run(graph, full[:batch])

        started = time.perf_counter()
        threads = await batcher.warm_up(work)
        log.info(
            "warmed up %s/%s: batch sizes %s on %s in %.2f s",
            name,
            graph,
            f"{sizes[-1]}..{sizes[0]}" if len(sizes) > 1 else sizes[0],
            threads,
            time.perf_counter() - started,
        )


class Engine:
    def __init__(self, models: dict[str, LoadedModel], batchers: dict[tuple[str, str], Batcher]) -> None:
        self.models = models
        self.batchers = batchers

    def hello(self) -> dict[str, Any]:
        return {
            "op": "hello",
            "models": {
                name: {
                    "providers": m.providers,
                    "provider_options": m.sessions["encoder"].get_provider_options(),
                }
                for name, m in self.models.items()
            },
        }

    async def serve_front_end(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One front end's connection: its hello, then its runs until it closes."""
        hello = await wire.read(reader)
        if hello is None or hello.get("op") != "hello":
            writer.close()
            return
        ring = SlotRing.attach(RingSpec(**hello["ring"]))
        writer.write(wire.encode(self.hello()))
        runs: dict[int, asyncio.Task[None]] = {}
        try:
            while (message := await wire.read(reader)) is not None:
                if message["op"] == "run":
                    task = asyncio.create_task(self._run(message, ring, writer))
                    runs[message["id"]] = task
                    task.add_done_callback(lambda _, i=message["id"]: runs.pop(i, None))
                elif message["op"] == "cancel" and (task := runs.get(message["id"])) is not None:
                    task.cancel()
        finally:  # the front end is gone: its work goes too
            for task in list(runs.values()):
                task.cancel()
            await asyncio.gather(*runs.values(), return_exceptions=True)
            writer.close()
            ring.close()

    async def _run(self, m: dict[str, Any], ring: SlotRing, writer: asyncio.StreamWriter) -> None:
        """View the rows in the slot, run them in the graph's batch, write the outputs after them."""
        answer: dict[str, Any]
        try:
            model = self.models[m["model"]]
            spec = model.manifest.input
            shape = (m["rows"], *(int(d) for d in spec.shape[1:]))
            rows = ring.array(m["slot"], 0, spec.dtype, shape)  # (k, ...) in shared memory
            outputs = await self.batchers[(m["model"], m["graph"])].submit(rows, m["outputs"])
            offset = aligned(rows.nbytes)
            placed = []
            for name, array in outputs.items():
                ring.array(m["slot"], offset, array.dtype.name, array.shape)[...] = array
                placed.append([name, array.dtype.name, list(array.shape), offset])
                offset += aligned(array.nbytes)
            answer = {"id": m["id"], "ok": True, "outputs": placed}
        except asyncio.CancelledError:
            answer = {"id": m["id"], "ok": False, "code": "cancelled", "message": "cancelled"}
        except EngineError as e:
            answer = {"id": m["id"], "ok": False, "code": e.code, "message": e.message}
            answer["retry_after_s"] = e.retry_after_s
        except Exception as e:  # a bad message or a slot too small: that request fails, not the engine
            log.exception("run %s failed", m.get("id"))
            answer = {"id": m["id"], "ok": False, "code": "engine_error", "message": str(e)}
        if not writer.is_closing():
            writer.write(wire.encode(answer))


async def serve(spec: EngineSpec, hooks: HooksFor | None = None, go: Any | None = None) -> None:
    """Load, warm up, listen; until SIGTERM or the parent's death. `hooks(batch spec)` gives what each
    batcher reports to (the caller's metrics). With `go` (a multiprocessing Event), a spare: loaded and
    warm, it listens only once `go` is set (the engine before it died)."""
    models = await asyncio.to_thread(load_models, spec.model_dirs, spec.chooser, spec.threads, spec.precision)
    on_gpu = any(m.providers[0] != CPU for m in models.values())
    batching = spec.batching[on_gpu]
    batchers = start_batchers(models, batching, hooks(batching) if hooks is not None else None)
    engine = Engine(models, batchers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    try:
        await warm_up(batchers, models, spec.warmup_sizes[on_gpu])
        if go is not None:
            log.info("engine spare ready (pid %d): waiting to take over", os.getpid())
            # a thread blocks on the event (no polling: the spare idles at ~0 CPU) and wakes the moment
            # it is set; every TAKEOVER_CHECK_S it looks whether the spare should stop instead
            while not await asyncio.to_thread(go.wait, TAKEOVER_CHECK_S):
                if stop.is_set() or os.getppid() != parent:
                    return
        if not spec.socket_path.startswith("\0"):  # a file path (not an abstract socket's name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec.socket_path)  # an engine before this one died and left it
        server = await asyncio.start_unix_server(engine.serve_front_end, path=spec.socket_path)
        log.info(
            "engine ready (pid %d): %s",
            os.getpid(),
            ", ".join(f"{n} ({m.providers[0]})" for n, m in models.items()),
        )
        async with server:
            while not stop.is_set() and os.getppid() == parent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for batcher in batchers.values():
            await batcher.stop()


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
