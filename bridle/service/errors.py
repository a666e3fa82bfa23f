"""Every failure the service reports, as JSON `{"error": {"code": ..., "message": ...}}`.

`STATUSES` says what each status code means (the OpenAPI schema's error responses are built from it:
bridle/service/schemas.py). A 500 (an unexpected failure) carries the request id
(bridle/service/middleware.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridle.model.decoding import MediaError
from bridle.runtime.errors import EngineError

STATUSES = {
    400: "empty or malformed request",
    401: "missing or wrong API key",
    404: "unknown model or route",
    409: "a model reload that failed: what served serves on (POST /admin/reload)",
    413: "body, audio, video or image over a limit, or more model windows than a request may hold",
    415: "unsupported media, or no loaded model for it",
    422: "corrupt or undecodable media, video with no frames, model without classifier or features graph, "
    "invalid parameters",
    503: "overloaded, queue full, timeout, not ready or shutting down (with Retry-After)",
}
MEDIA_STATUS = {
    "empty": 400,
    "corrupt": 422,
    "unsupported": 415,
    "too_long": 413,
    "too_large": 413,
    "no_frames": 422,
}


class ServiceError(Exception):
    """An error with its HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def retry_later(code: str, message: str, retry_after_s: int) -> ServiceError:
    """A 503 the client should retry: `{message}; retry later` with a Retry-After header."""
    return ServiceError(503, code, f"{message}; retry later", {"Retry-After": str(retry_after_s)})


def from_media_error(err: MediaError, filename: str | None = None) -> ServiceError:
    where = f"{filename}: " if filename else ""
    return ServiceError(MEDIA_STATUS.get(err.code, 422), err.code, f"{where}{err}")


def from_engine_error(err: EngineError) -> ServiceError:
    """503 + Retry-After for work the engine could not take (full, timed out, stopping), else 500."""
    if err.retry_after_s is None:
        return ServiceError(500, err.code, err.message)
    return ServiceError(503, err.code, err.message, {"Retry-After": str(err.retry_after_s)})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def as_service_error(exc: Exception) -> ServiceError | None:
    """What the service answers for `exc`: its ServiceError, a media or engine error's, FastAPI's own
    errors (validation 422, 404, 405) reshaped; None for an unexpected failure (a 500, with the request
    id: bridle/service/middleware.py). One place for the app's handlers and the OpenAI routes' (which answer
    in OpenAI's shape: bridle/service/routes/openai_api.py)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, MediaError):
        return from_media_error(exc)
    if isinstance(exc, EngineError):
        return from_engine_error(exc)
    if isinstance(exc, RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return ServiceError(422, "invalid_parameter", "; ".join(parts) or "invalid request")
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ServiceError(exc.status_code, code, str(exc.detail), dict(getattr(exc, "headers", None) or {}))
    return None


def install_handlers(app: FastAPI) -> None:
    """Answer the service's errors, and reshape FastAPI's own (validation, 404, 405), as JSON."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        err = as_service_error(exc)
        assert err is not None  # registered only for the types as_service_error knows
        return error_response(err.status, err.code, err.message, err.headers or None)

    for kind in (ServiceError, MediaError, EngineError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, handle)
