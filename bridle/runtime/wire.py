"""The engine's small messages: length-prefixed JSON frames over a Unix socket (asyncio streams).

Only metadata travels here (request id, slot, model, graph, rows, output names, shapes and offsets);
the arrays are in the shared-memory slots (bridle/runtime/slots.py). Messages:

- front end -> engine: `{"op": "hello", "ring": {name, slots, slot_bytes}}`, then
  `{"op": "run", "id", "slot", "model", "graph", "rows", "outputs"}` and `{"op": "cancel", "id"}`;
- engine -> front end: `{"op": "hello", "models": {name: {"providers", "provider_options"}}}`, then one
  answer per run: `{"id", "ok": true, "outputs": [[name, dtype, shape, offset], ...]}` or
  `{"id", "ok": false, "code", "message", "retry_after_s"}`.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # metadata only: a frame larger than this is a broken peer


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream (the peer closed or died)."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ConnectionError(f"a {size}-byte frame: not the engine protocol")
        return json.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
