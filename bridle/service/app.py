"""The HTTP service: FastAPI routes over the inference layer (`bridle/service/infer.py`).

`create_app(settings)` builds the app; its lifespan starts the inference layer (`Inference.start`: the models
load once, in this process on its GPU when there is one, or in the engine process for a front end:
bridle/service/engines.py), which settles the device's batching defaults, and warms every graph up (503
`not_ready` until then). The routes (bridle/service/routes/, one `APIRouter` per family)
read and validate requests and serialise the typed results; everything between lives in `Inference`. Their
query parameters and answers are pydantic models (bridle/service/schemas.py), which the OpenAPI schema at
`/openapi.json` and `/docs` is generated from:

- `POST /embed`, `POST /tokenize`, `POST /classify`, `POST /features` (routes/inference.py);
- `GET /health`, `GET /ready`, `GET /metrics` (routes/health.py), `GET /models` (routes/models.py),
  `GET /` (the page: routes/page.py, bridle/service/static/);
- `POST /admin/reload` (routes/admin.py): the model directories read again and swapped while serving
  (`Inference.reload`); SIGHUP does the same (in one process here, else through the supervisor);
- the OpenAI embeddings API, `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{model}`
  (routes/openai_api.py, with its own request and answer models).

Errors are JSON `{"error": {"code", "message"}}` (bridle/service/errors.py lists the status codes; the `/v1`
routes add OpenAI's `type` and `param`); every response carries `X-Request-ID` (bridle/service/middleware.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute

from bridle.model.logs import log_to_stderr
from bridle.runtime import tracing
from bridle.runtime.client import EngineLink
from bridle.runtime.errors import ModelLoadError
from bridle.service.errors import install_handlers
from bridle.service.infer import Inference
from bridle.service.metrics import Metrics, MetricsMiddleware
from bridle.service.middleware import Admission, AdmissionState, RequestIds
from bridle.service.routes import ROUTERS
from bridle.service.routes.admission import admitted_routes
from bridle.service.settings import Settings
from bridle.service.state import ServiceState

log = logging.getLogger("bridle.service")
UNTRACED = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapes: no trace each


def create_app(settings: Settings | None = None, engine: EngineLink | None = None) -> FastAPI:
    """The app; with `engine`, a front-end process whose graphs run in the engine process
    (bridle/service/supervisor.py), else the models load and run in this process."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = app.state.bridle
        inference = state.inference
        try:
            await inference.start(engine)
        except ModelLoadError as e:
            state.startup_error = e
            raise
        state.settings = inference.settings  # the device's
        warm = asyncio.create_task(inference.warm_up())
        hangup = _reload_on_sighup(inference)
        try:
            yield
        finally:
            hangup()
            warm.cancel()
            await inference.stop()

    # traces when OTEL_EXPORTER_OTLP_ENDPOINT asks (bridle/runtime/tracing.py): FastAPI's server span is each
    # request's root, the parent of bridle's own spans, and a child of the client's `traceparent`
    tracer_provider = tracing.start("front-end" if engine is not None else "server")
    app = FastAPI(
        title="bridle",
        summary="Embeddings, discrete codes and labels from BRIDLE encoders (ONNX Runtime)",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks cost ~6 % of the event loop per request even with no provider
        telemetry={
            "tracer_provider": tracer_provider,
            "tracing": tracer_provider is not None or settings.opentelemetry,
            "operation_spans": False,  # bridle's own spans (read, decode, ...) cover the route's work
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
            "exclude": lambda scope: scope.get("path") in UNTRACED,
        },
    )
    metrics = Metrics.create()
    admission = AdmissionState(
        settings.max_concurrent_requests,
        settings.retry_after_s,
        on_refuse=lambda cause: metrics.refused.labels(cause).inc(),
        on_refused_early=metrics.count_early_refusals,
        on_count=metrics.in_flight.set,
    )
    app.state.bridle = ServiceState(settings, Inference(settings, {}, metrics), admission)
    install_handlers(app)
    # the last added runs first: ids around everything, then metrics, then admission
    app.add_middleware(Admission, state=admission)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: _routes(app))
    app.add_middleware(RequestIds)
    for router in ROUTERS:
        app.include_router(router)
    # the bound covers the routes that declare `@admitted`; a route that declares nothing stops here
    admission.routes = admitted_routes(app)
    return app


def _reload_on_sighup(inference: Inference) -> Callable[[], None]:
    """SIGHUP reloads the models, when this server runs in the main thread (`bridle-serve` in one
    process; a test's server thread cannot take signals; a front-end process has SIGHUP blocked: the
    supervisor passes it to the engine process). Returns what removes the handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def reload() -> None:
        task = loop.create_task(inference.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


def _routes(app: FastAPI) -> list[BaseRoute]:
    """The app's routes, for the metrics' route labels: FastAPI keeps an included router as one entry
    of `app.routes`, so the routers' own routes are added."""
    return [*app.routes, *(r for router in ROUTERS for r in router.routes)]


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers): settings from the environment."""
    log_to_stderr()
    return create_app(Settings())
