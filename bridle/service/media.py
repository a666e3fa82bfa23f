"""Request bodies -> uploads, with the size limit enforced while streaming.

Uploads come as `multipart/form-data` (one or more parts named `file`, kept in order) or as a raw body
with its own Content-Type. The body limit is checked against Content-Length before anything is read and
again on every chunk, so an oversized upload is refused without being buffered. Decoding and windowing
the uploads is the runtime's (bridle/runtime/windows.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from bridle.service.errors import ServiceError

FILE_FIELDS = ("file", "files")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    content_type: str | None
    data: bytes


def _too_large(limit: int) -> ServiceError:
    return ServiceError(413, "too_large", f"the request body exceeds the upload limit of {limit} bytes")


async def read_uploads(request: Request, max_bytes: int) -> list[Upload]:
    """The uploaded files of a request, in order; 400 when there is none, 413 over `max_bytes`."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ServiceError(400, "bad_request", f"invalid Content-Length {length!r}")
        if int(length) > max_bytes:
            raise _too_large(max_bytes)
    content_type = request.headers.get("content-type")
    media_type, options = parse_options_header(content_type or "")
    if media_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ServiceError(400, "bad_request", "multipart/form-data without a boundary")
        uploads = await _read_multipart(request, boundary, max_bytes)
        if not uploads:
            raise ServiceError(400, "empty", "the multipart body has no non-empty part named 'file'")
        return uploads
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if not body:
        raise ServiceError(400, "empty", "the request body is empty: send a file")
    return [Upload(None, content_type, bytes(body))]


class _PartCollector:
    """python-multipart callbacks that keep the file parts (name in FILE_FIELDS) as they stream by."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda b, s, e: setattr(self, "_field", self._field + b[s:e]),
            "on_header_value": lambda b, s, e: setattr(self, "_value", self._value + b[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda b, s, e: self._data.extend(b[s:e]),
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _end(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FILE_FIELDS:
            return
        filename = disposition.get(b"filename")
        ctype = self._headers.get(b"content-type")
        self.uploads.append(
            Upload(
                filename.decode("utf-8", "replace") if filename is not None else None,
                ctype.decode("latin-1") if ctype else None,
                bytes(self._data),
            )
        )


async def _read_multipart(request: Request, boundary: bytes, max_bytes: int) -> list[Upload]:
    collector = _PartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        try:
            parser.write(chunk)
        except Exception as e:  # python-multipart raises its own parse errors
            raise ServiceError(400, "bad_request", f"malformed multipart body: {e}") from e
    try:
        parser.finalize()
    except Exception as e:
        raise ServiceError(400, "bad_request", f"malformed multipart body: {e}") from e
    return collector.uploads
