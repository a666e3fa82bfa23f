"""`bridle-serve`: check the settings, then serve the model directories with uvicorn.

The models load once, in the app's lifespan (in each worker with `--workers` > 1, each worker on its own
GPU from `BRIDLE_DEVICE_ID`: `bridle/runtime/devices.py`). Invalid settings, a missing model directory, or one
that fails to load (missing file, sha256 mismatch, a graph ONNX Runtime cannot open) stop the start with
a message and exit status 2; with several workers the parent checks the models first, on the CPU only (a
GPU context in the parent would hold GPU memory for nothing), so a bad model stops the start there.

SIGTERM (or Ctrl-C) drains: new inference requests get 503 `shutting_down`, the requests in flight finish
(for at most `BRIDLE_DRAIN_TIMEOUT_S`), then the server stops and the process exits 0. A second signal
stops at once. With several workers, uvicorn's own graceful shutdown (same timeout) applies instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from bridle.model.logs import log_to_stderr
from bridle.runtime.devices import SLOTS_ENV
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import find_model_dirs, load_models
from bridle.runtime.sessions import CPU, CpuThreads, ProviderChooser
from bridle.service.memory import hold_mmap_threshold
from bridle.service.server import DrainingServer, server_config, server_options
from bridle.service.settings import Settings, frontends_defaulted
from bridle.service.supervisor import serve_processes, shared_memory_shortfall

EXIT_BAD_START = 2
log = logging.getLogger("bridle.service")

cli = typer.Typer(add_completion=False, help="Serve BRIDLE model directories over HTTP.")


def _fail(message: str) -> None:
    print(f"error: cannot start: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_START)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (BRIDLE_HOST, default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (BRIDLE_PORT, default 8000)")] = None,
    model_dir: Annotated[
        list[Path] | None,
        typer.Option(help="a model directory or a folder of them; repeatable (BRIDLE_MODEL_DIRS)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (BRIDLE_WORKERS, default 1)")
    ] = None,
) -> None:
    log_to_stderr()
    hold_mmap_threshold()  # freed large blocks go back to the system (bridle/service/memory.py)
    given = {"host": host, "port": port, "model_dirs": model_dir or None, "workers": workers}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
        find_model_dirs(settings.model_dirs)
    except (ValidationError, ModelLoadError) as e:
        _fail(str(e))
    try:
        short = shared_memory_shortfall(settings) if settings.frontends else None
    except ModelLoadError as e:  # a manifest the rings are sized from cannot be read
        _fail(str(e))
    if short is not None:
        if not frontends_defaulted(settings):
            _fail(short)
        log.warning("%s; serving in one process (BRIDLE_FRONTENDS=0)", short)
        settings = settings.model_copy(update={"frontends": 0})
    if settings.frontends:  # front-end processes over an engine process (bridle/service/supervisor.py)
        try:
            serve_processes(settings)
        except ModelLoadError as e:
            _fail(str(e))
        return
    if settings.workers > 1:
        try:  # each worker would fail alike, and uvicorn would restart it forever
            load_models(
                settings.model_dirs, ProviderChooser([CPU]), CpuThreads(intra_op=1), settings.precision
            )
        except ModelLoadError as e:
            _fail(str(e))
        _serve_workers(settings)
        return
    from bridle.service.app import create_app

    app = create_app(settings)
    config = server_config(app, settings, host=settings.host, port=settings.port)
    server = DrainingServer(config, app.state.bridle.admission, settings.drain_timeout_s)
    with contextlib.suppress(SystemExit):  # uvicorn exits 3 when the lifespan fails to start
        server.run()
    if not server.started:
        error = app.state.bridle.startup_error
        _fail(str(error) if error is not None else "the server did not start (see the log above)")


def _serve_workers(settings: Settings) -> None:
    """Several worker processes; each builds the app from the environment, claims a device slot (its
    GPU: `bridle/runtime/devices.py`) and loads the models once."""
    os.environ["BRIDLE_MODEL_DIRS"] = ",".join(str(p) for p in settings.model_dirs)
    with tempfile.TemporaryDirectory(prefix="bridle-device-slots-") as slots:
        os.environ[SLOTS_ENV] = slots
        uvicorn.run(
            "bridle.service.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            **server_options(settings),
        )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
