"""The inference layer between HTTP and ONNX Runtime: uploads in, typed results out.

`Inference` owns the loaded models, the engine that runs their graphs (bridle/service/engines.py: in this
process, or the engine process's client) and the decoding thread pool.
For each request it picks the model of every upload, checks that the model can do what is asked (before
any decoding or scheduling), decodes and windows the uploads off the event loop, checks the request's
window count, runs the graph through the engine's batchers (fetching only the outputs the task needs:
`OUTPUTS`) and reduces the outputs: the clip's embedding and scores from its windows'
(bridle/model/windowing.py: a mean weighted by each window's seconds of signal, or the maximum of a
multi-label head's scores), L2 normalisation, softmax (or sigmoid, for multi-label models) and top-k. It
knows nothing of HTTP: `bridle/service/routes/` reads the request and serialises these results.

`reload()` swaps the models while serving (bridle/runtime/registry.py, bridle/runtime/engine.py): each request
holds the set of models that served when it began (a generation) until it ends, so the requests in flight
finish on the old loads while new ones take the new; a replaced load stops (one process) or is released to the
engine (a front end) once no request holds it. `model=NAME` takes NAME's newest version, `model=NAME@VERSION`
a given one (bridle/runtime/versions.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import numpy as np

from bridle.model.decoding import MediaError
from bridle.model.modalities import Modality, sniff_modality, spec_for
from bridle.model.scores import scores as class_scores
from bridle.model.scores import top_k_indices
from bridle.model.windowing import Aggregate, aggregate_for, clip_mean, clip_scores
from bridle.runtime import tracing
from bridle.runtime.client import EngineLink
from bridle.runtime.errors import EngineError
from bridle.runtime.interface import InferenceEngine
from bridle.runtime.models import LoadedModel
from bridle.runtime.versions import default_model, resolve
from bridle.runtime.windows import Limits, Windows, decodes_quickly, to_windows
from bridle.service.engines import FEATURES, make_engine
from bridle.service.errors import ServiceError, from_media_error, retry_later
from bridle.service.media import Upload
from bridle.service.metrics import Metrics
from bridle.service.settings import Settings, usable_cores

log = logging.getLogger("bridle.service")

# the graph outputs each task fetches (the encoder also has `patch_embeddings`, fetched for /embed
# with pooling=tokens only; the tokenizer also has `quantized`, which no route returns)
OUTPUTS = {
    "embed": ("embedding",),
    "tokens": ("patch_embeddings",),
    "classify": ("logits",),
    "tokenize": ("codes",),
}
RETIRE_TIMEOUT_S = 300.0  # a reload: how long requests in flight may hold the loads it replaced


# ---- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Which upload a result is for, the model that read it and its windows' spans in seconds."""

    filename: str | None
    model: LoadedModel
    duration: float | None  # seconds of media (audio, video); None for an image
    spans: list[tuple[float | None, float | None]]  # (start, end) per window


@dataclass(frozen=True)
class Embedding:
    source: Source
    clip: np.ndarray  # (D,) mean of the window embeddings, weighted by their seconds of signal
    windows: np.ndarray  # (W, D)
    tokens: np.ndarray | None  # (W, N, D) patch embeddings, when asked for


@dataclass(frozen=True)
class Codes:
    source: Source
    codes: np.ndarray  # (W, N, L) int64


@dataclass(frozen=True)
class Features:
    source: Source
    features: np.ndarray  # (W, ...) the encoder's input: audio (W, 1, frames, mel), image (W, 3, S, S)...


@dataclass(frozen=True)
class Label:
    label: str
    score: float
    id: str | None = None  # the label's id (an AudioSet mid) when the manifest has label_ids


@dataclass(frozen=True)
class Labels:
    source: Source
    clip: list[Label]  # top-k of the clip's scores (`aggregate` of the window scores)
    windows: list[list[Label]]  # top-k per window
    aggregate: str = "mean"  # "mean" (weighted by seconds of signal) or "max" over the windows


# ---- the layer -------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    upload: Upload
    model: LoadedModel
    windows: Windows

    def source(self) -> Source:
        return Source(self.upload.filename, self.model, self.windows.duration, self.windows.spans)


@dataclass
class _Generation:
    """The models that served when a request began: it holds them until it ends."""

    models: dict[str, LoadedModel]  # by key
    users: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def holds(self, instances: set[str]) -> bool:
        return any(m.instance in instances for m in self.models.values())


@dataclass
class Inference:
    settings: Settings
    models: dict[str, LoadedModel]  # the models new requests take, by key (NAME, NAME@VERSION)
    metrics: Metrics
    engine: InferenceEngine | None = None  # where the graphs run (`start`)
    _decoders: ThreadPoolExecutor | None = None
    _generation: _Generation | None = None
    _older: list[_Generation] = field(default_factory=list)  # replaced, with requests still on them
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        """The graphs can run: warm here, or a warm engine process connected."""
        return self.engine is not None and self.engine.ready

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_audio_seconds, s.max_image_pixels, s.max_video_seconds)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, link: EngineLink | None = None) -> None:
        """Load the models and start where their graphs run (in the event loop): in this process, or in
        the engine process over `link` (a front end; bridle/service/engines.py `make_engine`). The models
        given at construction (a test's) run as they are; else they load here (`ModelLoadError` when
        one does not). Then the settings are the device's (`Settings.for_device`)."""
        self.engine = make_engine(self.settings, self.metrics, self, link, self.models or None)
        self.models = await self.engine.load()
        self.settings = self.settings.for_device(self.engine.on_gpu)
        self.engine.start()
        self._start_decoders()

    def _start_decoders(self) -> None:
        threads = self.settings.decode_threads or usable_cores()
        self._decoders = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def warm_up(self) -> None:
        """Every graph runs the warm-up batch sizes (`Settings.warmup_sizes`: every size 1..max on a GPU,
        a batch of one on a CPU, largest first) on each thread of its batcher, the threads at once; then
        the service is ready.

        The first run of each new batch shape on a GPU pays a cuDNN algorithm search and arena growth,
        and the CUDA provider keeps per-thread state, so the runs happen here, on the threads that will
        serve. ONNX Runtime's memory arena grows to the largest batches it has run and keeps that
        memory; sized here, it does not grow later under load (the resident size stays flat).

        A failed warm-up (e.g. out of GPU memory at the largest batch) is logged, and the service stays
        not ready (503 on /ready, so a healthcheck or an orchestrator sees it). A front end waits here
        for the engine process, which warms itself up."""
        if self.engine is None:
            raise RuntimeError("start() first")
        try:
            await self.engine.warm_up()
        except Exception:
            log.exception("warm-up failed: the service stays not ready")
            return
        log.info("ready: %s", ", ".join(f"{n} ({m.providers[0]})" for n, m in self.models.items()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.engine is not None:
            await self.engine.stop()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)

    # ---- reloads ------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Read the model directories again and serve what they hold now: {"ok", "models", "loaded",
        "unloaded"}, or {"ok": False, "message", "models"} when a load failed (what served serves on).
        In a front end the engine process reloads, and every front end switches with it; either way
        the engine calls `switch`."""
        if self.engine is None:
            raise ServiceError(409, "not_started", "the models are not loaded yet")
        try:
            return await self.engine.reload()
        except EngineError as e:  # the engine process is gone (restarting)
            raise retry_later(e.code, e.message, self.settings.retry_after_s) from None

    def switch(
        self, models: dict[str, LoadedModel], then: Any, replaced: list[LoadedModel] | None = None
    ) -> None:
        """New requests take `models` from now on; once no request holds a load of `replaced` (None:
        every load not in `models`), `await then()`."""
        old = self._current()
        self.models = models
        self._older = [g for g in [*self._older, old] if g.users]
        kept = {m.instance for m in models.values()}
        gone = {m.instance for m in (replaced if replaced is not None else old.models.values())} - kept
        self._spawn(self._when_idle(gone, then))

    async def _when_idle(self, instances: set[str], then: Any) -> None:
        holding = [g for g in self._older if g.holds(instances)]
        try:
            await asyncio.wait_for(asyncio.gather(*(g.idle.wait() for g in holding)), RETIRE_TIMEOUT_S)
        except TimeoutError:
            log.warning("reload: requests still held the replaced models after %.0f s", RETIRE_TIMEOUT_S)
        await then()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _current(self) -> _Generation:
        if self._generation is None or self._generation.models is not self.models:
            self._generation = _Generation(self.models)
        return self._generation

    def _hold(self) -> _Generation:
        generation = self._current()
        generation.users += 1
        generation.idle.clear()
        return generation

    def _let_go(self, generation: _Generation) -> None:
        generation.users -= 1
        if not generation.users:
            generation.idle.set()

    # ---- the three tasks ---------------------------------------------------------------------
    async def embed(
        self, uploads: list[Upload], model: str | None, tokens: bool = False, normalize: bool = False
    ) -> list[Embedding]:
        results = []
        outputs = OUTPUTS["embed"] + (OUTPUTS["tokens"] if tokens else ())
        for p, out in await self._run(uploads, model, "encoder", outputs):
            windows = out["embedding"]  # (W, D)
            clip = clip_mean(windows, p.windows.spans)  # (D,)
            patches = out["patch_embeddings"] if tokens else None  # (W, N, D)
            if normalize:
                windows, clip = _l2(windows), _l2(clip)
                patches = _l2(patches) if patches is not None else None
            results.append(Embedding(p.source(), clip, windows, patches))
        return results

    async def tokenize(self, uploads: list[Upload], model: str | None) -> list[Codes]:
        found = await self._run(uploads, model, "tokenizer", OUTPUTS["tokenize"])
        return [Codes(p.source(), out["codes"]) for p, out in found]

    async def classify(
        self,
        uploads: list[Upload],
        model: str | None,
        top_k: int,
        threshold: float | None = None,
        aggregate: Aggregate | None = None,
    ) -> list[Labels]:
        """Top-k labels per window and for the clip, only those scoring at least `threshold` when given.
        Scores are a softmax over the labels, or independent sigmoid probabilities for a multi-label
        model (the manifest's classifier.activation). The clip's scores are the window scores'
        `aggregate`: "mean" (weighted by seconds of signal) or "max" (sigmoid heads only: 422 for a
        softmax head); by default max for a sigmoid head, mean for a softmax one."""
        results = []
        found = await self._run(
            uploads, model, "encoder", OUTPUTS["classify"], need_classifier=True, aggregate=aggregate
        )
        for p, out in found:
            manifest = p.model.manifest
            activation = manifest.classifier.activation
            scores = class_scores(out["logits"].astype(np.float64), activation)  # (W, C)
            how = aggregate_for(activation, aggregate)  # checked in _prepare
            k = min(top_k, len(manifest.labels))
            ids = manifest.label_ids
            clip = _top(clip_scores(scores, p.windows.spans, how), manifest.labels, k, threshold, ids)
            windows = [_top(row, manifest.labels, k, threshold, ids) for row in scores]
            results.append(Labels(p.source(), clip, windows, how))
        return results

    async def features(self, uploads: list[Upload], model: str | None) -> list[Features]:
        """The encoder's input as it saw it, per window: the `features` graph (the preprocessing cut out
        of the encoder, bridle/export/features.py) run on each upload's windows in a worker thread (a light
        graph, not batched). 422 `no_features` for a model directory without it."""
        generation = self._hold()
        try:
            return await self._features(uploads, model, generation.models)
        finally:
            self._let_go(generation)

    async def _features(
        self, uploads: list[Upload], model: str | None, models: dict[str, LoadedModel]
    ) -> list[Features]:
        prepared = await asyncio.gather(*(self._prepare(u, model, False, models=models) for u in uploads))
        self._check_size([len(p.windows.spans) for p in prepared])
        for p in prepared:
            if FEATURES not in p.model.sessions:
                raise ServiceError(
                    422,
                    "no_features",
                    f"model {p.model.name!r} has no {FEATURES}.onnx: add it with "
                    f"`bridle-export features {p.model.directory}`",
                )
        found = await asyncio.gather(
            *(
                anyio.to_thread.run_sync(p.model.run, FEATURES, p.windows.signal, (FEATURES,))
                for p in prepared
            )
        )
        return [
            Features(p.source(), out[FEATURES].astype(np.float32))
            for p, out in zip(prepared, found, strict=True)
        ]

    # ---- steps -------------------------------------------------------------------------------
    def model_for(
        self, name: str | None, modality: Modality, models: dict[str, LoadedModel] | None = None
    ) -> LoadedModel:
        """The named model of `models` (None: those new requests take): a key, or a name for its newest
        version (404 unknown, 415 for a modality it does not read); or the first model of the upload's
        modality (415 when none is loaded)."""
        models = self.models if models is None else models
        if name is not None:
            model = resolve(models, name)
            if model is None:
                raise ServiceError(404, "unknown_model", f"no model named {name!r}; loaded: {sorted(models)}")
            if modality not in spec_for(model.manifest.modality).reads:
                raise ServiceError(
                    415,
                    "wrong_modality",
                    f"model {name!r} takes {model.manifest.modality}, the upload is {modality}",
                )
            return model
        model = default_model(models, modality)
        if model is None:
            loaded = sorted(models)
            raise ServiceError(415, "unsupported", f"no loaded model takes {modality}; loaded: {loaded}")
        return model

    async def _run(
        self,
        uploads: list[Upload],
        model: str | None,
        graph: str,
        outputs: tuple[str, ...],
        need_classifier: bool = False,
        aggregate: Aggregate | None = None,
    ) -> list[tuple[_Prepared, dict[str, np.ndarray]]]:
        engine = self.engine
        if engine is None:
            raise RuntimeError("start() first")
        generation = self._hold()  # this request's models, whatever a reload does meanwhile
        try:
            prepared = await asyncio.gather(
                *(self._prepare(u, model, need_classifier, aggregate, generation.models) for u in uploads)
            )
            self._check_size([len(p.windows.spans) for p in prepared])
            results = await asyncio.gather(
                *(engine.submit(p.model.instance, graph, p.windows.signal, outputs) for p in prepared)
            )
        finally:
            self._let_go(generation)
        return list(zip(prepared, results, strict=True))

    def _check_size(self, windows: list[int]) -> None:
        """413 for a request that no queue could take: over `max_windows`, or more batch-sized parts
        than a queue holds (each upload is split into parts of at most `max_batch_size` windows)."""
        s = self.settings
        parts = sum(-(-w // s.max_batch_size) for w in windows)
        if sum(windows) > s.max_windows or parts > s.queue_size:
            raise ServiceError(
                413,
                "too_many_windows",
                f"the request makes {sum(windows)} model windows, over what one request may hold "
                f"({s.max_windows} windows in at most {s.queue_size} parts of {s.max_batch_size}): "
                "send shorter media or fewer files",
            )

    async def _prepare(
        self,
        upload: Upload,
        model_name: str | None,
        need_classifier: bool,
        aggregate: Aggregate | None = None,
        models: dict[str, LoadedModel] | None = None,
    ) -> _Prepared:
        """Sniff, pick (of `models`) and check the model (its head, and that it can pool scores by
        `aggregate`), then decode and window the upload: in a worker thread, unless it is sure to be
        quick."""
        try:
            model = self.model_for(model_name, sniff_modality(upload.data, upload.content_type), models)
        except MediaError as e:
            raise from_media_error(e, upload.filename) from None
        if need_classifier and not model.manifest.has_classifier:
            raise ServiceError(422, "no_classifier", f"model {model.name!r} has no classifier head")
        if need_classifier:
            try:
                aggregate_for(model.manifest.classifier.activation, aggregate)
            except ValueError as e:
                raise ServiceError(422, "bad_aggregate", f"model {model.name!r}: {e}") from None
        loop = asyncio.get_running_loop()
        with tracing.span("decode") as span:
            try:
                if decodes_quickly(model.manifest, upload.data):  # in place: cheaper than a thread hop
                    windows = self._decode(model, upload.data)
                else:
                    windows = await loop.run_in_executor(self._decoders, self._decode, model, upload.data)
            except MediaError as e:
                raise from_media_error(e, upload.filename) from None
            if span is not None:
                span.set_attribute("bridle.model", model.key)
                span.set_attribute("bridle.windows", len(windows.spans))
        return _Prepared(upload, model, windows)

    def _decode(self, model: LoadedModel, data: bytes) -> Windows:
        self.metrics.decodes.inc()
        started = time.perf_counter()
        try:
            return to_windows(model.manifest, data, self.limits, self.settings.window_policy)
        finally:
            self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _top(
    probs: np.ndarray,
    labels: list[str],
    k: int,
    threshold: float | None = None,
    ids: list[str] | None = None,
) -> list[Label]:
    order = top_k_indices(probs, k)  # (k,)
    return [
        Label(labels[i], float(probs[i]), ids[i] if ids else None)
        for i in order
        if threshold is None or probs[i] >= threshold
    ]
