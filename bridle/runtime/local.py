"""The in-process engine: the model graphs run in this process, a dynamic batcher per graph.

`LocalEngine` is what `bridle-serve` runs in one process (BRIDLE_FRONTENDS=0) and what the engine
process runs for its front ends (bridle/runtime/engine.py): it loads the model directories (one ONNX
Runtime session per graph), starts a `Batcher` per model graph under the device's batching
(`LocalSpec.batching`, picked once the providers are known), warms every graph up on the threads that
will serve, runs request parts through the batchers and reloads through the `Registry`. It is one of the
two `InferenceEngine`s (bridle/runtime/interface.py); the other is the engine process's client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridle.runtime.batcher import Batcher, BatcherHooks, BatchSpec
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.interface import InferenceEngine
from bridle.runtime.models import LoadedModel, load_model, load_models
from bridle.runtime.registry import Registry
from bridle.runtime.sessions import CPU, CpuThreads, ProviderChooser
from bridle.runtime.slots import ENGINE_GRAPHS

log = logging.getLogger("bridle.runtime")

# what the caller's metrics give each model graph's batcher, from the batching in force on the device
HooksFor = Callable[[BatchSpec], Callable[[str, str], BatcherHooks]]
# a reload: (the models new requests take, what to await once no request holds a replaced load, those)
Switch = Callable[[dict[str, LoadedModel], Callable[[], Awaitable[None]], list[LoadedModel]], None]


@dataclass(frozen=True)
class LocalSpec:
    """What loading and running the models takes (picklable: it crosses to the engine process once)."""

    model_dirs: list[Path]
    chooser: ProviderChooser
    threads: CpuThreads
    precision: list[str]
    batching: dict[bool, BatchSpec]  # by "the models run on a GPU"
    warmup_sizes: dict[bool, list[int]]  # likewise; largest first


def start_batchers(
    models: dict[str, LoadedModel], batch: BatchSpec, hooks: Callable[[str, str], BatcherHooks] | None = None
) -> dict[tuple[str, str], Batcher]:
    """A started batcher per model graph (in the running event loop), by (the load's instance id,
    graph); `hooks(model key, graph)` gives each its `BatcherHooks`."""
    batchers = {}
    for model in models.values():
        for graph in ENGINE_GRAPHS:
            batcher = Batcher(
                f"{model.key}/{graph}",
                lambda signal, outputs, mdl=model, g=graph: mdl.run(g, signal, outputs),
                batch,
                hooks(model.key, graph) if hooks is not None else None,
            )
            batcher.start()
            batchers[(model.instance, graph)] = batcher
    return batchers


async def warm_up(
    batchers: dict[tuple[str, str], Batcher], models: dict[str, LoadedModel], sizes: list[int]
) -> None:
    """Every graph runs the batch `sizes` (largest first) on each thread of its batcher, the threads at
    once: kernels, threads and the memory arena are ready before the first request. `batchers` are by
    (instance, graph), as `start_batchers` makes them; `models` hold their loads."""
    loads = {m.instance: m for m in models.values()}
    for (instance, graph), batcher in batchers.items():
        model = loads[instance]
        full = model.dummy_batch(max(sizes))  # (max, ...); each size is a view of its first rows

        def work(model: LoadedModel = model, graph: str = graph, full: np.ndarray = full) -> None:
            for batch in sizes:
                model.run(graph, full[:batch])

        started = time.perf_counter()
        threads = await batcher.warm_up(work)
        log.info(
            "warmed up %s/%s: batch sizes %s on %s in %.2f s",
            model.key,
            graph,
            f"{sizes[-1]}..{sizes[0]}" if len(sizes) > 1 else sizes[0],
            threads,
            time.perf_counter() - started,
        )


class LocalEngine(InferenceEngine):
    def __init__(
        self,
        spec: LocalSpec,
        hooks: HooksFor | None = None,
        switch: Switch | None = None,
        models: dict[str, LoadedModel] | None = None,
    ) -> None:
        """`hooks(batching)` gives what each batcher reports to (the caller's metrics); `switch` is told
        of each reload's new set (`reload`; None: reloads are the caller's, as in the engine process);
        `models`: already loaded (a test's, a benchmark's), not loaded again."""
        self.spec, self.hooks, self.switch = spec, hooks, switch
        self._given = models
        self.registry: Registry | None = None
        self.on_gpu = False
        self.warm = False
        self._reloading = asyncio.Lock()

    @property
    def batching(self) -> BatchSpec:
        return self.spec.batching[self.on_gpu]

    @property
    def ready(self) -> bool:
        return self.warm

    # ---- lifecycle ---------------------------------------------------------------------------
    async def load(self) -> dict[str, LoadedModel]:
        """Load the model directories (`ModelLoadError` when one does not load); the models by key."""
        s = self.spec
        if self._given is not None:
            models = self._given
        else:
            models = await asyncio.to_thread(load_models, s.model_dirs, s.chooser, s.threads, s.precision)
        self.on_gpu = any(m.providers[0] != CPU for m in models.values())
        make_hooks = self.hooks(self.batching) if self.hooks is not None else None
        self.registry = Registry(
            s.model_dirs,
            s.precision,
            lambda directory, version: load_model(directory, s.chooser, s.threads, version=version),
            lambda loads: start_batchers(loads, self.batching, make_hooks),
            lambda batchers, loads: warm_up(batchers, loads, self.spec.warmup_sizes[self.on_gpu]),
            models,
        )
        return models

    def start(self) -> None:
        """A batcher per model graph (in the event loop)."""
        self._registry().start()

    async def warm_up(self) -> None:
        """Every graph runs the warm-up batch sizes on each thread of its batcher (`warm_up`); then
        it is ready. A failure raises, and it stays not ready."""
        registry = self._registry()
        await warm_up(registry.batchers, registry.models, self.spec.warmup_sizes[self.on_gpu])
        self.warm = True

    async def stop(self) -> None:
        self.warm = False
        if self.registry is not None:
            for batcher in list(self.registry.batchers.values()):
                await batcher.stop()

    def _registry(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("load() the models first")
        return self.registry

    # ---- requests ----------------------------------------------------------------------------
    async def submit(
        self, model: str, graph: str, rows: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `graph` of the load `model` (its instance id) on `rows` (k, ...) in the batches of
        everyone else; the `outputs` named (all when None), each (k, ...)."""
        return await self._registry().batchers[(model, graph)].submit(rows, outputs)

    # ---- reloads -----------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Read the model directories again and serve what they hold now (`Registry.stage`, then
        `switch`): {"ok", "models", "loaded", "unloaded"}, or {"ok": False, "message", "models"} when a
        load failed (what served serves on). A replaced load stops once no request holds it."""
        registry = self._registry()
        async with self._reloading:
            serving = sorted(registry.current)
            try:
                staged = await registry.stage()
            except ModelLoadError as e:
                log.error("reload failed, still serving %s: %s", serving, e)
                return {"ok": False, "message": str(e), "models": serving}
            if staged.changed:
                registry.commit(staged)
                removed = staged.removed
                if self.switch is not None:
                    self.switch(staged.current, lambda: registry.discard(removed), removed)
                log.info("reload: serving %s (loaded %s)", sorted(staged.current), staged.summary()["loaded"])
            return {"ok": True, **staged.summary()}
