"""The HTTP service: FastAPI routes over dynamically batched ONNX Runtime sessions.

`create_app(settings, models)` builds the app; the models are loaded (and checked) before, by the CLI, or
in the lifespan when not given. Routes:

- `POST /embed`, `POST /tokenize`, `POST /classify`: uploads as multipart (`file`, several allowed) or a
  raw body; `model` query parameter (manifest name) or the model of the detected modality. Unknown
  model: 404 `unknown_model`.
- `GET /health`, `GET /ready`, `GET /metrics`, `GET /models`, `GET /` (a small page), `/docs`.

Errors are JSON `{"error": {"code", "message"}}` (service/errors.py lists the status codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from bridle_model.decoding import MediaError, sniff_modality
from service.batching import Batcher, BatcherHooks
from service.errors import ServiceError, error_response, from_media_error, install_handlers
from service.media import Limits, Upload, Windows, read_uploads, to_windows
from service.metrics import Metrics, MetricsMiddleware
from service.runtime import LoadedModel, ProviderChooser, load_models
from service.settings import Settings, usable_cores

log = logging.getLogger("bridle.service")

STATIC = Path(__file__).parent / "static"
GRAPHS = ("encoder", "tokenizer")
ACCEPTS = {"audio": ("audio", "video"), "image": ("image",), "video": ("video", "audio")}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "one or more files as multipart/form-data parts named `file`, "
        "or one file as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ModelParam = Query(
    None, description="model name from its manifest; default: the model of the upload's modality"
)


@dataclass
class ServiceState:
    settings: Settings
    models: dict[str, LoadedModel]
    metrics: Metrics
    batchers: dict[tuple[str, str], Batcher] = field(default_factory=dict)
    decoders: ThreadPoolExecutor | None = None  # decoding runs here, off the event loop
    ready: bool = False

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_audio_seconds, s.max_image_pixels, s.max_video_seconds)

    def model_for(self, name: str | None, modality: str) -> LoadedModel:
        if name is not None:
            if name not in self.models:
                raise ServiceError(
                    404, "unknown_model", f"no model named {name!r}; loaded: {sorted(self.models)}"
                )
            model = self.models[name]
            # audio and video files share containers: an audio model reads the sound of a video, and a
            # video model given a file without pictures says so (422 no_frames) from its decoder
            if modality not in ACCEPTS[model.manifest.modality]:
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


# ---- setup -----------------------------------------------------------------------------------------


def _make_batchers(state: ServiceState) -> None:
    s, m = state.settings, state.metrics
    for name, model in state.models.items():
        for graph in GRAPHS:
            hooks = BatcherHooks(
                on_batch=m.batch_size.labels(name, graph).observe,
                on_depth=m.queue_depth.labels(name, graph).set,
                on_reject=lambda reason, n=name, g=graph: m.rejected.labels(n, g, reason).inc(),
            )
            state.batchers[(name, graph)] = Batcher(
                run=lambda signal, mdl=model, g=graph: mdl.run(g, signal),
                name=f"{name}/{graph}",
                max_batch_size=s.max_batch_size,
                max_wait_s=s.max_wait_ms / 1000,
                queue_size=s.queue_size,
                timeout_s=s.request_timeout_s,
                retry_after_s=s.retry_after_s,
                hooks=hooks,
                concurrent_runs=s.concurrent_runs,
            )


async def _warm_up(state: ServiceState) -> None:
    """One dummy batch through every graph, then the service is ready."""
    for model in state.models.values():
        for graph in GRAPHS:
            await anyio.to_thread.run_sync(model.run, graph, model.dummy_batch())
    state.ready = True
    log.info("ready: %s", ", ".join(f"{n} ({m.providers[0]})" for n, m in state.models.items()))


def create_app(settings: Settings | None = None, models: dict[str, LoadedModel] | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = app.state.bridle
        if not state.models:
            chooser = ProviderChooser(settings.providers, settings.use_tensorrt)
            state.models = await anyio.to_thread.run_sync(
                load_models, settings.model_dirs, chooser, settings.cpu_threads
            )
        _make_batchers(state)
        for batcher in state.batchers.values():
            batcher.start()
        threads = settings.decode_threads or usable_cores()
        state.decoders = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        warm = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()
            state.decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="bridle",
        summary="Embeddings, discrete codes and labels from BRIDLE encoders (ONNX Runtime)",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks cost ~6 % of the event loop per request even with no provider
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.bridle = ServiceState(settings=settings, models=dict(models or {}), metrics=Metrics.create())
    install_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.bridle.metrics, routes=lambda: app.routes)
    _add_routes(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers): settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())


# ---- auth ------------------------------------------------------------------------------------------


async def require_key(request: Request) -> None:  # async: FastAPI runs a plain def in a thread
    """With an API key configured: `X-API-Key: <key>` or `Authorization: Bearer <key>`, else 401."""
    expected = request.app.state.bridle.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(
            401,
            "unauthorized",
            "missing or wrong API key (X-API-Key or Authorization: Bearer)",
            {"WWW-Authenticate": "Bearer"},
        )


# ---- inference -------------------------------------------------------------------------------------


@dataclass
class Prepared:
    upload: Upload
    model: LoadedModel
    windows: Windows


async def _prepare(state: ServiceState, upload: Upload, model_name: str | None) -> Prepared:
    """Sniff, pick the model, decode and window the upload (decoding runs in a worker thread)."""
    try:
        modality = sniff_modality(upload.data, upload.content_type)
        model = state.model_for(model_name, modality)
        loop = asyncio.get_running_loop()
        windows = await loop.run_in_executor(
            state.decoders, to_windows, model.manifest, upload.data, state.limits
        )
    except MediaError as e:
        raise from_media_error(e, upload.filename) from None
    return Prepared(upload, model, windows)


async def _run(state: ServiceState, request: Request, model_name: str | None, graph: str):
    if not state.ready:
        retry = {"Retry-After": str(state.settings.retry_after_s)}
        raise ServiceError(503, "not_ready", "the models are still warming up", retry)
    uploads = await read_uploads(request, state.settings.max_upload_bytes)
    prepared = await asyncio.gather(*(_prepare(state, u, model_name) for u in uploads))
    outputs = await asyncio.gather(
        *(state.batchers[(p.model.name, graph)].submit(p.windows.signal) for p in prepared)
    )
    return list(zip(prepared, outputs, strict=True))


def _header(p: Prepared) -> dict[str, Any]:
    m = p.model.manifest
    return {
        "filename": p.upload.filename,
        "model": m.name,
        "modality": m.modality,
        "duration": p.windows.duration,
    }


def _results(results: list[dict[str, Any]]) -> JSONResponse:
    """The body of /embed, /tokenize and /classify; a Response, so FastAPI does not serialise it again."""
    return JSONResponse({"results": results})


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _top(probs: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": labels[i], "score": float(probs[i])} for i in order]


def _add_routes(app: FastAPI) -> None:
    def state_of(request: Request) -> ServiceState:
        return request.app.state.bridle

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="the process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 once every model is loaded and warmed up, else 503")
    async def ready(request: Request) -> JSONResponse:
        state = state_of(request)
        if not state.ready:
            return error_response(503, "not_ready", "the models are still warming up", {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "models": sorted(state.models)})

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_key)])
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/models",
        summary="the loaded models: manifests and execution providers",
        dependencies=[Depends(require_key)],
    )
    async def models(request: Request) -> dict[str, Any]:
        state = state_of(request)
        return {
            "models": [
                {
                    "name": name,
                    "modality": m.manifest.modality,
                    "directory": str(m.directory),
                    "providers": m.providers,
                    "execution_provider": m.providers[0],
                    "manifest": m.manifest.to_dict(),
                }
                for name, m in state.models.items()
            ]
        }

    @app.post(
        "/embed",
        summary="pooled embedding per upload (and per window); pooling=tokens adds the patch embeddings",
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_key)],
    )
    async def embed(
        request: Request,
        model: str | None = ModelParam,
        pooling: Literal["mean", "tokens"] = Query(
            "mean", description="tokens: also the (N, D) patch embeddings"
        ),
        normalize: bool = Query(False, description="L2-normalise the embeddings"),
    ) -> JSONResponse:
        state = state_of(request)
        results = []
        for p, out in await _run(state, request, model, "encoder"):
            emb = out["embedding"]  # (W, D)
            clip = emb.mean(axis=0)  # (D,)
            if normalize:
                emb, clip = _l2(emb), _l2(clip)
            windows = []
            for w, (start, end) in enumerate(p.windows.spans):
                item: dict[str, Any] = {"start": start, "end": end, "embedding": emb[w].tolist()}
                if pooling == "tokens":
                    tokens = out["patch_embeddings"][w]  # (N, D)
                    item["patch_embeddings"] = (_l2(tokens) if normalize else tokens).tolist()
                windows.append(item)
            results.append(
                {**_header(p), "dim": int(clip.shape[0]), "embedding": clip.tolist(), "windows": windows}
            )
        return _results(results)

    @app.post(
        "/tokenize",
        summary="multi-level discrete codes (N, L) per window, with the patch grid to place them",
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_key)],
    )
    async def tokenize(request: Request, model: str | None = ModelParam) -> JSONResponse:
        state = state_of(request)
        results = []
        for p, out in await _run(state, request, model, "tokenizer"):
            m = p.model.manifest
            codes = out["codes"]  # (W, N, L) int64
            results.append(
                {
                    **_header(p),
                    "patch_grid": m.patch_grid,
                    "grid_axes": m.grid_axes,
                    "layout": "codes[n]: the patch at row-major index n over patch_grid (grid_axes)",
                    "levels": m.quantizer.levels,
                    "codebook_size": m.quantizer.codebook_size,
                    "tokenizer_kind": m.tokenizer_kind,
                    "windows": [
                        {"start": s, "end": e, "codes": codes[w].tolist()}
                        for w, (s, e) in enumerate(p.windows.spans)
                    ],
                }
            )
        return _results(results)

    @app.post(
        "/classify",
        summary="top-k labels with softmax scores, per window and for the whole clip (mean of window scores)",
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_key)],
    )
    async def classify(
        request: Request,
        model: str | None = ModelParam,
        top_k: int = Query(5, ge=1, le=1000, description="how many labels to return"),
    ) -> JSONResponse:
        state = state_of(request)
        if model is not None and model in state.models and not state.models[model].manifest.has_classifier:
            raise ServiceError(422, "no_classifier", f"model {model!r} has no classifier head")
        results = []
        for p, out in await _run(state, request, model, "encoder"):
            m = p.model.manifest
            if not m.has_classifier or "logits" not in out:
                raise ServiceError(422, "no_classifier", f"model {m.name!r} has no classifier head")
            probs = _softmax(out["logits"].astype(np.float64))  # (W, C)
            k = min(top_k, len(m.labels))
            windows = [
                {"start": s, "end": e, "labels": _top(probs[w], m.labels, k)}
                for w, (s, e) in enumerate(p.windows.spans)
            ]
            results.append(
                {**_header(p), "labels": _top(probs.mean(axis=0), m.labels, k), "windows": windows}
            )
        return _results(results)
