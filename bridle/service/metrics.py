"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests).

With front-end processes (`BRIDLE_FRONTENDS` > 0) every process records into files of one folder
(prometheus_client's multiprocess mode: the supervisor names it in `PROMETHEUS_MULTIPROC_DIR` before it
starts them), and any front end's `/metrics` adds up all of them: the requests of every front end, and the
engine process's batching and run metrics. Gauges are summed over the live processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from bridle.runtime.batcher import BatcherHooks

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FILL_BUCKETS = (0.125, 0.25, 0.5, 0.75, 0.999, 1.0)
# the stages of an inference request, timed by `bridle_stage_seconds`
STAGES = ("read", "decode", "queue_wait", "run", "serialise")


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter  # route, status
    latency: Histogram  # route
    batch_size: Histogram  # model, graph: rows per ORT run
    queue_depth: Gauge  # model, graph: requests waiting for a batch
    rejected: Counter  # model, graph, reason ("queue_full", "timeout")
    in_flight: Gauge  # inference requests being read, decoded, queued or run
    stage_seconds: Histogram  # stage (STAGES): per request (read, decode, serialise) or per batch (run)
    batch_fill: Histogram  # model, graph: rows per run / max_batch_size
    refused: Counter  # cause: overloaded, shutting_down, disconnected (before the engine)
    bodies_read: Counter  # request bodies read (admitted inference requests)
    decodes: Counter  # uploads decoded into windows

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                "bridle_requests", "HTTP requests by route and status", ["route", "status"], registry=r
            ),
            latency=Histogram(
                "bridle_request_latency_seconds",
                "request latency",
                ["route"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            batch_size=Histogram(
                "bridle_batch_size",
                "rows per ONNX Runtime run",
                ["model", "graph"],
                buckets=BATCH_BUCKETS,
                registry=r,
            ),
            queue_depth=Gauge(
                "bridle_queue_depth",
                "requests waiting for a batch",
                ["model", "graph"],
                registry=r,
                multiprocess_mode="livesum",
            ),
            rejected=Counter(
                "bridle_rejected",
                "requests refused by a batching queue",
                ["model", "graph", "reason"],
                registry=r,
            ),
            in_flight=Gauge(
                "bridle_in_flight",
                "inference requests in flight (reading, decoding, queued or running)",
                registry=r,
                multiprocess_mode="livesum",
            ),
            stage_seconds=Histogram(
                "bridle_stage_seconds",
                "time per stage: read (body), decode (per upload), queue_wait (per batched part), "
                "run (per ONNX Runtime call), serialise (per response)",
                ["stage"],
                buckets=STAGE_BUCKETS,
                registry=r,
            ),
            batch_fill=Histogram(
                "bridle_batch_fill",
                "rows per ONNX Runtime run / max_batch_size",
                ["model", "graph"],
                buckets=FILL_BUCKETS,
                registry=r,
            ),
            refused=Counter(
                "bridle_refused",
                "inference requests refused or dropped before the engine, by cause",
                ["cause"],
                registry=r,
            ),
            bodies_read=Counter("bridle_bodies_read", "request bodies read", registry=r),
            decodes=Counter("bridle_decodes", "uploads decoded into model windows", registry=r),
        )

    def count_early_refusals(self, route: str, count: int) -> None:
        """`count` overload refusals of `route` answered before the app (bridle/service/protocol.py)."""
        self.refused.labels("overloaded").inc(count)
        self.requests.labels(route, "503").inc(count)

    def render(self) -> bytes:
        """The text exposition: this app's registry, or every process's files in multiprocess mode."""
        if os.environ.get(MULTIPROCESS_ENV):
            everyone = CollectorRegistry()
            MultiProcessCollector(everyone)
            return generate_latest(everyone)
        return generate_latest(self.registry)

    def batcher_hooks(self, max_batch: int) -> Callable[[str, str], BatcherHooks]:
        """What the batcher of each model graph reports: batch size and fill, queue depth and wait,
        refusals, run time (in this process, or in the engine process)."""

        def hooks(model: str, graph: str) -> BatcherHooks:
            size, fill = self.batch_size.labels(model, graph), self.batch_fill.labels(model, graph)

            def on_batch(rows: int) -> None:
                size.observe(rows)
                fill.observe(rows / max_batch)

            return BatcherHooks(
                on_batch=on_batch,
                on_depth=self.queue_depth.labels(model, graph).set,
                on_reject=lambda reason: self.rejected.labels(model, graph, reason).inc(),
                on_wait=self.stage_seconds.labels("queue_wait").observe,
                on_run=self.stage_seconds.labels("run").observe,
            )

        return hooks


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by route and status and times it (no body buffering).

    Paths that are not routes of the app are counted as "other" (the label set stays bounded).
    """

    def __init__(self, app: Any, metrics: Metrics, routes: Callable[[], Sequence[Any]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._paths: set[str] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._paths is None:
            self._paths = {p for r in self.routes() if isinstance(p := getattr(r, "path", None), str)}
        route = scope["path"] if scope["path"] in self._paths else "other"
        status = 500  # unless a response starts
        start = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get("state", {}).get("dropped"):
                status = 499  # the client left before its answer (nginx's "client closed request")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
