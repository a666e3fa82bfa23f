"""The HTTP service: FastAPI routes over the inference layer (`service/infer.py`).

`create_app(settings)` builds the app; its lifespan loads the models once (on this process's GPU, when
there is one: `runtime/devices.py`), settles the device's batching defaults, starts the batchers and warms
every graph up (503 `not_ready` until then). The routes read and validate requests and serialise the
typed results; everything between lives in `Inference`. Routes:

- `POST /embed`, `POST /tokenize`, `POST /classify`: uploads as multipart (`file`, several allowed) or a
  raw body; `model` query parameter (manifest name) or the model of the detected modality. Unknown
  model: 404 `unknown_model`.
- `POST /features`: the encoder's input as the model saw it, for the page (service/features.py).
- `GET /health`, `GET /ready`, `GET /metrics`, `GET /models`, `GET /` (the page: service/static/), `/docs`.

Errors are JSON `{"error": {"code", "message"}}` (service/errors.py lists the status codes); every
response carries `X-Request-ID` (service/middleware.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from runtime.client import EngineLink
from runtime.devices import device_for_process
from runtime.errors import ModelLoadError
from runtime.models import load_models
from runtime.sessions import CPU
from service.errors import ServiceError, error_response, install_handlers, retry_later
from service.features import add_features_route
from service.infer import Codes, Embedding, Inference, Label, Labels, Source
from service.media import read_uploads
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import Admission, AdmissionState, RequestIds
from service.settings import Settings

log = logging.getLogger("bridle.service")

STATIC = Path(__file__).parent / "static"
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
Encoding = Literal["json", "base64"]
EncodingParam = Query(
    "json",
    description="base64: patch_embeddings (float32) and codes (int32) as little-endian base64 "
    "{dtype, shape, data} objects (docs/contracts.md); json: nested numbers",
)


@dataclass
class ServiceState:
    settings: Settings
    inference: Inference
    admission: AdmissionState
    startup_error: Exception | None = None  # why the lifespan could not load the models

    def unavailable(self) -> ServiceError | None:
        """The 503 of a service that cannot take work yet (warming up) or any more (draining)."""
        if self.admission.draining:
            return self.admission.draining_error()
        if not self.inference.ready:
            return retry_later("not_ready", "the models are still warming up", self.settings.retry_after_s)
        return None


def create_app(settings: Settings | None = None, engine: EngineLink | None = None) -> FastAPI:
    """The app; with `engine`, a front-end process whose graphs run in the engine process
    (service/supervisor.py), else the models load and run in this process."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = app.state.bridle
        inference = state.inference
        if engine is not None:
            await inference.open_engine(engine)
            try:
                yield
            finally:
                await inference.stop()
            return
        try:
            chooser = settings.provider_chooser(device_for_process(settings.device_id))
            inference.models = await anyio.to_thread.run_sync(
                load_models, settings.model_dirs, chooser, settings.cpu_threads, settings.precision
            )
        except ModelLoadError as e:
            state.startup_error = e
            raise
        inference.on_gpu = any(m.providers[0] != CPU for m in inference.models.values())
        state.settings = inference.settings = settings.for_device(inference.on_gpu)
        inference.start()
        warm = asyncio.create_task(inference.warm_up())
        try:
            yield
        finally:
            warm.cancel()
            await inference.stop()

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
    metrics = Metrics.create()
    admission = AdmissionState(
        settings.max_concurrent_requests,
        settings.retry_after_s,
        on_refuse=lambda cause: metrics.refused.labels(cause).inc(),
    )
    metrics.in_flight.set_function(lambda: admission.in_flight)
    app.state.bridle = ServiceState(settings, Inference(settings, {}, metrics), admission)
    install_handlers(app)
    # the last added runs first: ids around everything, then metrics, then admission
    app.add_middleware(Admission, state=admission)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.routes)
    app.add_middleware(RequestIds)
    _add_routes(app)
    add_features_route(app, require_key, UPLOAD_BODY)
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


# ---- serialisation ---------------------------------------------------------------------------------


def _header(source: Source) -> dict[str, Any]:
    m = source.model.manifest
    return {"filename": source.filename, "model": m.name, "modality": m.modality, "duration": source.duration}


def _results(state: ServiceState, build: Callable[[], list[dict[str, Any]]]) -> JSONResponse:
    """The body of /embed, /tokenize and /classify, built and rendered (timed as the `serialise` stage);
    a Response, so FastAPI does not serialise it again."""
    started = time.perf_counter()
    response = JSONResponse({"results": build()})
    state.inference.metrics.stage_seconds.labels("serialise").observe(time.perf_counter() - started)
    return response


def _array(x: np.ndarray, encoding: Encoding, dtype: str) -> Any:
    """`x` as nested JSON numbers, or with `encoding=base64` as {"dtype", "shape", "data"}: the
    little-endian `dtype` bytes in row-major order, base64 (docs/contracts.md says how to decode)."""
    if encoding == "json":
        return x.tolist()
    data = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(x.shape), "data": base64.b64encode(data).decode("ascii")}


def _labels(labels: list[Label]) -> list[dict[str, Any]]:
    return [
        {"label": x.label, "id": x.id, "score": x.score}
        if x.id is not None
        else {"label": x.label, "score": x.score}
        for x in labels
    ]


def _embedding(e: Embedding, encoding: Encoding = "json") -> dict[str, Any]:
    windows = []
    for w, (start, end) in enumerate(e.source.spans):
        item: dict[str, Any] = {"start": start, "end": end, "embedding": e.windows[w].tolist()}
        if e.tokens is not None:
            item["patch_embeddings"] = _array(e.tokens[w], encoding, "float32")  # (N, D)
        windows.append(item)
    return {
        **_header(e.source),
        "dim": int(e.clip.shape[0]),
        "embedding": e.clip.tolist(),
        "windows": windows,
    }


def _codes(c: Codes, encoding: Encoding = "json") -> dict[str, Any]:
    m = c.source.model.manifest
    return {
        **_header(c.source),
        "patch_grid": m.patch_grid,
        "grid_axes": m.grid_axes,
        "layout": "codes[n]: the patch at row-major index n over patch_grid (grid_axes)",
        "levels": m.quantizer.levels,
        "codebook_size": m.quantizer.codebook_size,
        "tokenizer_kind": m.tokenizer_kind,
        "windows": [
            {"start": s, "end": e, "codes": _array(c.codes[w], encoding, "int32")}  # (N, L)
            for w, (s, e) in enumerate(c.source.spans)
        ],
    }


def _classes(x: Labels) -> dict[str, Any]:
    windows = [
        {"start": s, "end": e, "labels": _labels(x.windows[w])} for w, (s, e) in enumerate(x.source.spans)
    ]
    return {**_header(x.source), "aggregate": x.aggregate, "labels": _labels(x.clip), "windows": windows}


def _add_routes(app: FastAPI) -> None:
    def state_of(request: Request) -> ServiceState:
        return request.app.state.bridle

    async def uploads_of(request: Request):
        state = state_of(request)
        metrics = state.inference.metrics
        if (error := state.unavailable()) is not None:
            metrics.refused.labels(error.code).inc()  # not_ready or shutting_down, before the body
            raise error
        metrics.bodies_read.inc()
        started = time.perf_counter()
        uploads = await read_uploads(request, state.settings.max_upload_bytes)
        metrics.stage_seconds.labels("read").observe(time.perf_counter() - started)
        return uploads

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="the process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 once every model is loaded and warmed up, 503 before and while stopping")
    async def ready(request: Request) -> JSONResponse:
        state = state_of(request)
        if (e := state.unavailable()) is not None:
            return error_response(e.status, e.code, e.message, e.headers)
        return JSONResponse({"status": "ready", "models": sorted(state.inference.models)})

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_key)])
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state_of(request).inference.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/models",
        summary="the loaded models: manifests and execution providers",
        dependencies=[Depends(require_key)],
    )
    async def models(request: Request) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": name,
                    "modality": m.manifest.modality,
                    "directory": str(m.directory),
                    "providers": m.providers,
                    "execution_provider": m.providers[0],
                    # as the session holds them: the GPU's device_id, use_tf32, cudnn_conv_algo_search...
                    "provider_options": m.provider_options,
                    "precision": m.manifest.precision,
                    "manifest": m.manifest.to_dict(),
                }
                for name, m in state_of(request).inference.models.items()
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
        encoding: Encoding = EncodingParam,
    ) -> JSONResponse:
        uploads = await uploads_of(request)
        state = state_of(request)
        found = await state.inference.embed(uploads, model, pooling == "tokens", normalize)
        return _results(state, lambda: [_embedding(e, encoding) for e in found])

    @app.post(
        "/tokenize",
        summary="multi-level discrete codes (N, L) per window, with the patch grid to place them",
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_key)],
    )
    async def tokenize(
        request: Request, model: str | None = ModelParam, encoding: Encoding = EncodingParam
    ) -> JSONResponse:
        uploads = await uploads_of(request)
        state = state_of(request)
        found = await state.inference.tokenize(uploads, model)
        return _results(state, lambda: [_codes(c, encoding) for c in found])

    @app.post(
        "/classify",
        summary="top-k labels with scores, per window and for the whole clip (aggregate of the window "
        "scores): a softmax, or independent sigmoid probabilities (multi-label: classifier.activation)",
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_key)],
    )
    async def classify(
        request: Request,
        model: str | None = ModelParam,
        top_k: int = Query(5, ge=1, le=1000, description="how many labels to return"),
        threshold: float | None = Query(
            None, ge=0.0, le=1.0, description="return only the top-k labels scoring at least this"
        ),
        aggregate: Literal["mean", "max"] | None = Query(
            None,
            description="the clip's scores from its windows': mean (weighted by seconds of signal) or max "
            "(multi-label models only; 422 bad_aggregate for a softmax head); default max for a "
            "multi-label model, mean otherwise",
        ),
    ) -> JSONResponse:
        uploads = await uploads_of(request)
        state = state_of(request)
        found = await state.inference.classify(uploads, model, top_k, threshold, aggregate)
        return _results(state, lambda: [_classes(x) for x in found])
