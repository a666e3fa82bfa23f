"""The log set-up of every command and process (the CLIs, the service's processes, the batch job, the
experiments): the root logger's records, one line each, on stderr.

    2026-12-07 21:02:11,407 INFO bridle.service: loaded audio-digits (audio, fp32) ...   (timestamps)
    INFO bridle.training.stages: fbank statistics of the training data: ...             (timestamps=False)
"""

from __future__ import annotations

import logging

WITH_TIME = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WITHOUT_TIME = "%(levelname)s %(name)s: %(message)s"


def log_to_stderr(level: int = logging.INFO, timestamps: bool = True) -> None:
    """Records at `level` and above go to stderr, one line each; nothing changes where the root logger
    has a handler already (as `logging.basicConfig`)."""
    logging.basicConfig(level=level, format=WITH_TIME if timestamps else WITHOUT_TIME)
