"""The runtime's failures, without HTTP: the service maps them to status codes (bridle/service/errors.py)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model directory could not be loaded: the service must not start."""


class EngineError(RuntimeError):
    """A request the engine did not run: `code` is stable and machine-readable; `retry_after_s` is set
    when the client should try again later (the engine is full, stopping or timed out), and None when
    the run itself failed."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
