"""Where this process's model graphs run, picked from its settings: `make_engine`.

- one process (BRIDLE_FRONTENDS=0, or a test's app): a `LocalEngine` (bridle/runtime/local.py) on this
  process's GPU, when there is one (bridle/runtime/devices.py), with the device's batching;
- a front-end process (the supervisor gave it an `EngineLink`): an `EngineClient` (bridle/runtime/client.py)
  to the engine process, whose own `LocalEngine` takes the same `LocalSpec` (`local_spec`, as the
  supervisor builds it). What the engine says of its models reaches the front end's `Inference` through
  `FrontEndListener`.

Both are `InferenceEngine`s (bridle/runtime/interface.py): the inference layer (bridle/service/infer.py)
uses them alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from bridle.runtime.batcher import BatchSpec
from bridle.runtime.client import EngineClient, EngineLink, EngineListener
from bridle.runtime.devices import device_for_process
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.interface import InferenceEngine
from bridle.runtime.local import HooksFor, LocalEngine, LocalSpec
from bridle.runtime.models import LoadedModel, load_model, load_models
from bridle.runtime.sessions import CPU, CpuThreads, ProviderChooser
from bridle.runtime.wire import ModelInfo
from bridle.service.metrics import Metrics
from bridle.service.settings import Settings

log = logging.getLogger("bridle.service")
FEATURES = "features"  # the optional preprocessing graph and its output (POST /features): run in each process


class Serving(Protocol):
    """What an engine switches when the models change (bridle/service/infer.py's `Inference`)."""

    models: dict[str, LoadedModel]  # the models new requests take, by key

    def switch(
        self,
        models: dict[str, LoadedModel],
        then: Callable[[], Awaitable[None]],
        replaced: list[LoadedModel] | None = None,
    ) -> None: ...


def make_engine(
    settings: Settings,
    metrics: Metrics,
    serving: Serving,
    link: EngineLink | None = None,
    models: dict[str, LoadedModel] | None = None,
) -> InferenceEngine:
    """The engine process's client for a front end (`link`, from the supervisor), else the models in
    this process. `models`: already loaded (a test's), run as they are instead of loading them."""
    if link is not None:
        listener = FrontEndListener(serving, front_end_threads(settings))
        client = EngineClient(link, listener, lambda: front_end_models(settings))
        listener.client = client
        return client
    spec = local_spec(settings, device_for_process(settings.device_id))
    return LocalEngine(spec, hooks_for(metrics), serving.switch, models)


def hooks_for(metrics: Metrics) -> HooksFor:
    """What each graph's batcher reports to `metrics`, under the device's batching."""
    return lambda batching: metrics.batcher_hooks(batching.max_batch_size)


def batch_spec(s: Settings) -> BatchSpec:
    """The batchers' settings of `s` (the device's: `Settings.for_device`)."""
    return BatchSpec(
        max_batch_size=s.max_batch_size,
        max_wait_s=s.max_wait_ms / 1000,
        queue_size=s.queue_size,
        timeout_s=s.request_timeout_s,
        retry_after_s=s.retry_after_s,
        concurrent_runs=s.concurrent_runs,
    )


def local_spec(settings: Settings, device: int) -> LocalSpec:
    """What running the models takes, on GPU `device` when the providers pick one: the CPU's batching
    and warm-up, and the GPU's (`Settings.for_device`)."""
    gpu = settings.for_device(on_gpu=True)
    return LocalSpec(
        model_dirs=settings.model_dirs,
        chooser=settings.provider_chooser(device),
        threads=settings.cpu_threads,
        precision=settings.precision,
        batching={False: batch_spec(settings), True: batch_spec(gpu)},
        warmup_sizes={False: settings.warmup_sizes(False), True: gpu.warmup_sizes(True)},
    )


def front_end_threads(settings: Settings) -> CpuThreads:
    """A front end's features graphs: one thread each; ONNX Runtime's memory arena as the engine's
    (BRIDLE_CPU_MEM_ARENA, off by default: the arena would keep the largest features run it saw)."""
    return CpuThreads(intra_op=1, arena=settings.cpu_mem_arena)


def front_end_models(settings: Settings) -> dict[str, LoadedModel]:
    """What a front end holds of the models the engine process serves: the manifests, and the light
    features graph it runs itself (the engine checks the hashes)."""
    return load_models(
        settings.model_dirs,
        ProviderChooser([CPU]),
        front_end_threads(settings),
        settings.precision,
        graphs=(FEATURES,),
        check_hashes=False,
    )


class FrontEndListener(EngineListener):
    """A front end's side of the engine's models: its hello and each reload (bridle/runtime/client.py)."""

    def __init__(self, serving: Serving, threads: CpuThreads) -> None:
        """`threads`: those of the features graphs it loads (`front_end_threads`)."""
        self.serving, self.threads = serving, threads
        self.client: EngineClient | None = None  # set once made: a reload's release goes through it
        self.prepared: dict[int, dict[str, LoadedModel]] = {}

    async def _models(self, engine_models: dict[str, ModelInfo]) -> dict[str, LoadedModel]:
        """The engine's models, by key, each named by the engine's instance id: the manifests (and
        features graph) this process holds for the same directory and files, else read now."""
        held = [*self.serving.models.values(), *(m for p in self.prepared.values() for m in p.values())]
        known = {(m.directory, m.fingerprint): m for m in held}
        models = {}
        for key, info in engine_models.items():
            directory = Path(info.directory)
            model = known.get((directory, info.fingerprint))
            if model is None:
                model = await anyio.to_thread.run_sync(
                    lambda d=directory, v=info.version: load_model(
                        d,
                        ProviderChooser([CPU]),
                        self.threads,
                        graphs=(FEATURES,),
                        check_hashes=False,  # the engine checks them
                        version=v,
                    )
                )
            models[key] = dataclasses.replace(model, instance=info.instance, engine_info=info)
        return models

    async def hello(self, engine_models: dict[str, ModelInfo]) -> None:
        try:
            models = await self._models(engine_models)
        except ModelLoadError as e:  # the engine read it: this process should too
            log.error("cannot read the engine's models here: %s", e)
            models = {}
        # a new engine: the old one, and the requests it held, are gone, so nothing to release
        self.serving.switch(models, _nothing)

    async def prepare(self, seq: int, models: dict[str, ModelInfo]) -> str | None:
        try:
            self.prepared[seq] = await self._models(models)
        except ModelLoadError as e:
            return str(e)
        return None

    def commit(self, seq: int) -> None:
        models = self.prepared.pop(seq, None)
        client = self.client
        if models is None or client is None:
            return

        async def release() -> None:
            client.release(seq)

        self.serving.switch(models, release)
        log.info("reload %d: serving %s", seq, sorted(models))

    def abort(self, seq: int) -> None:
        self.prepared.pop(seq, None)


async def _nothing() -> None:
    return None
