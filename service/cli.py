"""`bridle-serve`: check and load the model directories, then serve them with uvicorn.

A missing, corrupt or hash-mismatched model directory stops the start with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from service.runtime import ModelLoadError, ProviderChooser, find_model_dirs, load_models
from service.settings import Settings

EXIT_BAD_MODEL = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bridle-serve", description="Serve BRIDLE model directories over HTTP.")
    p.add_argument("--host", help="bind address (BRIDLE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (BRIDLE_PORT, default 8000)")
    p.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        dest="model_dirs",
        help="a model directory or a folder of them; repeatable (BRIDLE_MODEL_DIRS, default models/)",
    )
    p.add_argument("--workers", type=int, help="uvicorn worker processes (BRIDLE_WORKERS, default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    chooser = ProviderChooser(settings.providers, settings.use_tensorrt)
    try:
        if settings.workers == 1:
            models = load_models(settings.model_dirs, chooser, settings.cpu_threads)
        else:  # each worker loads its own copy: check everything here first
            for directory in find_model_dirs(settings.model_dirs):
                load_models([directory], chooser, settings.cpu_threads)
    except ModelLoadError as e:
        print(f"bridle-serve: cannot start: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_MODEL)

    if settings.workers == 1:
        from service.app import create_app

        uvicorn.run(
            create_app(settings, models),
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
        )
        return
    # several workers re-read their settings from the environment
    os.environ["BRIDLE_MODEL_DIRS"] = ",".join(str(p) for p in settings.model_dirs)
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="info",
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
