"""The inference layer between HTTP and ONNX Runtime: uploads in, typed results out.

`Inference` owns the loaded models, one dynamic batcher per model graph and the decoding thread pool.
For each request it picks the model of every upload, checks that the model can do what is asked (before
any decoding or scheduling), decodes and windows the uploads off the event loop, checks the request's
window count, runs the graph through the batchers (fetching only the outputs the task needs: `OUTPUTS`)
and reduces the outputs: the clip's embedding and scores from its windows' (bridle_model/windowing.py:
a mean weighted by each window's seconds of signal, or the maximum of a multi-label head's scores), L2
normalisation, softmax (or sigmoid, for multi-label models) and top-k. It knows nothing of HTTP:
`service/routes/` reads the request and serialises these results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np

from bridle_model.config import Modality
from bridle_model.decoding import MediaError, sniff_modality
from bridle_model.scores import scores as class_scores
from bridle_model.windowing import Aggregate, aggregate_for, clip_mean, clip_scores
from runtime.batcher import Batcher
from runtime.client import EngineClient, EngineLink, RemoteBatcher
from runtime.engine import BatchSpec, start_batchers
from runtime.engine import warm_up as warm_up_batchers
from runtime.models import LoadedModel, load_models
from runtime.sessions import CPU, CpuThreads, ProviderChooser
from runtime.slots import ENGINE_GRAPHS
from runtime.windows import Limits, Windows, decodes_quickly, to_windows
from service.errors import ServiceError, from_media_error
from service.media import Upload
from service.metrics import Metrics
from service.modalities import SERVED
from service.settings import Settings, usable_cores

log = logging.getLogger("bridle.service")

GRAPHS = ENGINE_GRAPHS
FEATURES = "features"  # the optional preprocessing graph and its output (POST /features)
# the graph outputs each task fetches (the encoder also has `patch_embeddings`, fetched for /embed
# with pooling=tokens only; the tokenizer also has `quantized`, which no route returns)
OUTPUTS = {
    "embed": ("embedding",),
    "tokens": ("patch_embeddings",),
    "classify": ("logits",),
    "tokenize": ("codes",),
}


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
class Inference:
    settings: Settings
    models: dict[str, LoadedModel]
    metrics: Metrics
    batchers: dict[tuple[str, str], Batcher | RemoteBatcher] = field(default_factory=dict)
    warm: bool = False  # this process's batchers are warm
    on_gpu: bool = False  # the models run on a GPU: its batching defaults and warm-up (Settings.for_device)
    engine: EngineClient | None = None  # a front-end process: the engine process runs the graphs
    _decoders: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        """The graphs can run: warm here, or a warm engine process connected."""
        return self.engine.ready if self.engine is not None else self.warm

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_audio_seconds, s.max_image_pixels, s.max_video_seconds)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start a batcher per model graph and the decoding pool (in the event loop)."""
        s = self.settings
        hooks = self.metrics.batcher_hooks(s.max_batch_size)
        self.batchers.update(start_batchers(self.models, batch_spec(s), hooks))
        self._start_decoders()

    async def open_engine(self, link: EngineLink) -> None:
        """A front-end process: the manifests (and the light features graph, run here) of the models the
        engine process serves, and a client that connects to it (ready once the engine is warm)."""
        self.models = await anyio.to_thread.run_sync(
            lambda: load_models(
                self.settings.model_dirs,
                ProviderChooser([CPU]),
                CpuThreads(intra_op=1),
                self.settings.precision,
                graphs=(FEATURES,),
                check_hashes=False,  # the engine checks them
            )
        )

        def on_hello(engine_models: dict[str, dict[str, object]]) -> None:
            for name, info in engine_models.items():
                if name in self.models:
                    self.models[name].engine_info = info

        self.engine = EngineClient(link, on_hello)
        self.engine.start()
        self.batchers.update(
            {
                (name, graph): RemoteBatcher(self.engine, name, graph)
                for name in self.models
                for graph in GRAPHS
            }
        )
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
        not ready (503 on /ready, so a healthcheck or an orchestrator sees it)."""
        try:
            sizes = self.settings.warmup_sizes(self.on_gpu)
            await warm_up_batchers(self.batchers, self.models, sizes)  # type: ignore[arg-type]
        except Exception:
            log.exception("warm-up failed: the service stays not ready")
            return
        self.warm = True
        log.info("ready: %s", ", ".join(f"{n} ({m.providers[0]})" for n, m in self.models.items()))

    async def stop(self) -> None:
        self.warm = False
        for batcher in self.batchers.values():
            if isinstance(batcher, Batcher):
                await batcher.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)

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
        of the encoder, export/features.py) run on each upload's windows in a worker thread (a light
        graph, not batched). 422 `no_features` for a model directory without it."""
        prepared = await asyncio.gather(*(self._prepare(u, model, False) for u in uploads))
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
    def model_for(self, name: str | None, modality: Modality) -> LoadedModel:
        """The named model (404 unknown, 415 for a modality it does not read), or the first model of
        the upload's modality (415 when none is loaded)."""
        if name is not None:
            if name not in self.models:
                raise ServiceError(
                    404, "unknown_model", f"no model named {name!r}; loaded: {sorted(self.models)}"
                )
            model = self.models[name]
            if modality not in SERVED[model.manifest.modality].reads:
                raise ServiceError(
                    415,
                    "wrong_modality",
                    f"model {name!r} takes {model.manifest.modality}, the upload is {modality}",
                )
            return model
        for model in self.models.values():
            if model.manifest.modality == modality:
                return model
        raise ServiceError(
            415, "unsupported", f"no loaded model takes {modality}; loaded: {sorted(self.models)}"
        )

    async def _run(
        self,
        uploads: list[Upload],
        model: str | None,
        graph: str,
        outputs: tuple[str, ...],
        need_classifier: bool = False,
        aggregate: Aggregate | None = None,
    ) -> list[tuple[_Prepared, dict[str, np.ndarray]]]:
        prepared = await asyncio.gather(
            *(self._prepare(u, model, need_classifier, aggregate) for u in uploads)
        )
        self._check_size([len(p.windows.spans) for p in prepared])
        results = await asyncio.gather(
            *(self.batchers[(p.model.name, graph)].submit(p.windows.signal, outputs) for p in prepared)
        )
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
    ) -> _Prepared:
        """Sniff, pick and check the model (its head, and that it can pool scores by `aggregate`),
        then decode and window the upload: in a worker thread, unless it is sure to be quick."""
        try:
            model = self.model_for(model_name, sniff_modality(upload.data, upload.content_type))
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
        try:
            if decodes_quickly(model.manifest, upload.data):  # in place: cheaper than a thread's round trip
                windows = self._decode(model, upload.data)
            else:
                windows = await loop.run_in_executor(self._decoders, self._decode, model, upload.data)
        except MediaError as e:
            raise from_media_error(e, upload.filename) from None
        return _Prepared(upload, model, windows)

    def _decode(self, model: LoadedModel, data: bytes) -> Windows:
        self.metrics.decodes.inc()
        started = time.perf_counter()
        try:
            return to_windows(model.manifest, data, self.limits, self.settings.window_policy)
        finally:
            self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)


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


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _top(
    probs: np.ndarray,
    labels: list[str],
    k: int,
    threshold: float | None = None,
    ids: list[str] | None = None,
) -> list[Label]:
    order = np.argsort(-probs, kind="stable")[:k]  # (k,)
    return [
        Label(labels[i], float(probs[i]), ids[i] if ids else None)
        for i in order
        if threshold is None or probs[i] >= threshold
    ]
