"""The service's uvicorn server, in one place: its settings, and a first SIGTERM that drains.

`bridle-serve` in one process (cli.py) and every front end of `BRIDLE_FRONTENDS=N` (supervisor.py) serve
the app with a `DrainingServer` on `server_config`; the workers of `BRIDLE_WORKERS > 1` (uvicorn's own
processes) take `server_options`.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from bridle.service.middleware import AdmissionState
from bridle.service.protocol import http_protocol
from bridle.service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("bridle.service")


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options from the settings: its log level, the access log, the graceful shutdown's limit."""
    return {
        "log_level": "info",
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": max(1, round(settings.drain_timeout_s)),
    }


def server_config(app: FastAPI, settings: Settings, **bind: Any) -> uvicorn.Config:
    """uvicorn's config of the app: the refusing protocol (bridle/service/protocol.py), `server_options`,
    and where it listens (`bind`: host and port; none for a front end, which is given the socket)."""
    return uvicorn.Config(
        app, http=http_protocol(app.state.bridle.admission), **bind, **server_options(settings)
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a first SIGTERM / SIGINT that drains before the usual shutdown."""

    def __init__(self, config: uvicorn.Config, admission: AdmissionState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.drain_timeout_s = drain_timeout_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.started and self.drain_started is None:
            self.admission.draining = True
            self.drain_started = time.monotonic()
            log.info(
                "%s: draining %d request(s) in flight", signal.Signals(sig).name, self.admission.in_flight
            )
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:  # every 0.1 s
        self.admission.publish_early_refusals()
        if self.drain_started is not None:
            waited = time.monotonic() - self.drain_started
            if self.admission.in_flight == 0 or waited > self.drain_timeout_s:
                return True
        return await super().on_tick(counter)
