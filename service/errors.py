"""Every failure the service reports, as JSON `{"error": {"code": ..., "message": ...}}`.

`STATUSES` says what each status code means (the OpenAPI schema's error responses are built from it:
service/schemas.py). A 500 (an unexpected failure) carries the request id (service/middleware.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridle_model.decoding import MediaError
from runtime.errors import EngineError

STATUSES = {
    400: "empty or malformed request",
    401: "missing or wrong API key",
    404: "unknown model or route",
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


def install_handlers(app: FastAPI) -> None:
    """Reshape FastAPI's own errors (validation, 404, 405) into the service's JSON form."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(MediaError)
    async def _media(_: Request, exc: MediaError) -> JSONResponse:
        err = from_media_error(exc)
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(EngineError)
    async def _engine(_: Request, exc: EngineError) -> JSONResponse:
        err = from_engine_error(exc)
        return error_response(err.status, err.code, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
