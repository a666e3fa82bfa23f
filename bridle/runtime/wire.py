"""The engine's small messages: typed, framed as length-prefixed JSON over a Unix socket (asyncio streams).

Only metadata travels here (request id, slot, model, graph, rows, output names, shapes and offsets);
the arrays are in the shared-memory slots (bridle/runtime/slots.py). Each message is a frozen dataclass;
on the wire it is one JSON object, its fields by name plus `"op"`, the class's tag:

    front end -> engine                          engine -> front end
    Hello(ring, rows)       once, first          Welcome(models)        the answer to Hello
    Run(id, slot, model, graph, rows, outputs)   Done(id, outputs) | Failed(id, code, ...)   one per Run
    Cancel(id)              the client left      (the Run is answered `Failed(code="cancelled")`)
    Reload(id)              POST /admin/reload   Reloaded(id, ok, models, ...)
    Prepared(seq, error)    answers Prepare      Prepare(seq, models)   a reload: load these manifests
    Committed(seq)          answers Commit       Commit(seq)            a reload: switch now
    Release(seq)            old loads idle here  Abort(seq)             a reload failed elsewhere

`encode(message)` gives a frame, `await read(reader)` the next message (None when the peer closed, died
or sent what is not this protocol: a broken peer ends the connection, never the reader).

Adding a field: give it a default (`trace: dict[str, str] | None = None`), at the end of its class. A
peer that does not know it ignores it (decoding takes the fields a class declares and skips the rest),
and a message without it decodes to the default. A field whose value is itself a dataclass or a tuple
type needs a line in `_decoders` (JSON brings it back as an object or a list).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import orjson

from bridle.runtime.slots import RingSpec

log = logging.getLogger("bridle.runtime")
HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # metadata only: a frame larger than this is a broken peer


class ProtocolError(ValueError):
    """A frame that is not a message of this protocol (bad JSON, an unknown op, a missing field)."""


@dataclass
class Message:
    """A message's base: `op` is its tag on the wire (each class sets its own)."""

    op: ClassVar[str] = ""


_CLASSES: dict[str, type[Message]] = {}  # op -> class
_FIELDS: dict[type[Message], frozenset[str]] = {}  # class -> its field names


M = TypeVar("M", bound=type[Message])


def tagged(op: str) -> Callable[[M], M]:
    """Register a message class under its wire tag `op`."""

    def register(cls: M) -> M:
        if op in _CLASSES:
            raise ValueError(f"two messages are tagged {op!r}")
        cls.op = op
        _CLASSES[op] = cls
        _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
        return cls

    return register


# ---- what messages carry ---------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """A load as the engine tells the front ends of it (Welcome, Prepare)."""

    instance: str  # the engine's id of the load: runs name it
    directory: str
    version: str | None
    fingerprint: str
    providers: list[str]
    provider_options: dict[str, Any]  # the encoder session's, by provider


class Placed(NamedTuple):
    """One output written into a run's slot (a JSON list: [name, dtype, shape, offset])."""

    name: str
    dtype: str
    shape: list[int]
    offset: int  # bytes from the slot's start


# ---- front end -> engine ---------------------------------------------------------------------------


@tagged("hello")
@dataclass
class Hello(Message):
    ring: RingSpec  # the front end's shared-memory ring
    rows: int  # rows per slot


@tagged("run")
@dataclass
class Run(Message):
    id: int
    slot: int  # the rows are at offset 0 of this slot of the sender's ring
    model: str  # the load's instance id
    graph: str
    rows: int
    outputs: list[str] | None  # None: every output
    trace: dict[str, str] | None = None  # the W3C trace context of the front end's span (runtime/tracing.py)


@tagged("cancel")
@dataclass
class Cancel(Message):
    id: int


@tagged("reload")
@dataclass
class Reload(Message):
    id: int


@tagged("prepared")
@dataclass
class Prepared(Message):
    seq: int
    error: str | None = None  # why this front end cannot load the new set


@tagged("committed")
@dataclass
class Committed(Message):
    seq: int


@tagged("release")
@dataclass
class Release(Message):
    seq: int


# ---- engine -> front end ---------------------------------------------------------------------------


@tagged("welcome")
@dataclass
class Welcome(Message):
    models: dict[str, ModelInfo]  # by key


@tagged("done")
@dataclass
class Done(Message):
    id: int
    outputs: list[Placed]


@tagged("failed")
@dataclass
class Failed(Message):
    id: int
    code: str
    message: str
    retry_after_s: int | None = None


@tagged("prepare")
@dataclass
class Prepare(Message):
    seq: int
    models: dict[str, ModelInfo]  # the new set, by key


@tagged("commit")
@dataclass
class Commit(Message):
    seq: int


@tagged("abort")
@dataclass
class Abort(Message):
    seq: int


@tagged("reloaded")
@dataclass
class Reloaded(Message):
    id: int
    ok: bool
    models: list[str]  # what serves now
    loaded: list[str] | None = None
    unloaded: list[str] | None = None
    message: str | None = None  # why it failed

    def answer(self) -> dict[str, Any]:
        """The reload's answer as `Engine.reload` gave it: {"ok", "models", "loaded", "unloaded"} or
        {"ok": False, "message", "models"}."""
        fields = {"ok": self.ok, "models": self.models, "loaded": self.loaded, "unloaded": self.unloaded}
        return {k: v for k, v in (fields | {"message": self.message}).items() if v is not None}


# ---- the frames ------------------------------------------------------------------------------------


def _models(value: dict[str, Any]) -> dict[str, ModelInfo]:
    return {key: ModelInfo(**info) for key, info in value.items()}


# the fields that JSON brings back as plain objects or lists, and what makes them typed again
_decoders: dict[type[Message], dict[str, Callable[[Any], Any]]] = {
    Hello: {"ring": lambda value: RingSpec(**value)},
    Welcome: {"models": _models},
    Prepare: {"models": _models},
    Done: {"outputs": lambda value: [Placed(*item) for item in value]},
}


def _plain(value: Any) -> Any:
    """What orjson does not write itself: a NamedTuple (`Placed`) as a list."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not part of the engine protocol")


def encode(message: Message) -> bytes:
    """One frame: a 4-byte big-endian length, then the message as a JSON object (orjson: this is the
    hot path; a nested dataclass, `RingSpec` or `ModelInfo`, is written as an object)."""
    body = orjson.dumps({"op": message.op, **vars(message)}, default=_plain)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """The message of a frame's body; `ProtocolError` when it is not one."""
    try:
        fields = orjson.loads(body)
        cls = _CLASSES[fields.pop("op")]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ProtocolError(f"not an engine message: {body[:80]!r}") from e
    try:
        if not fields.keys() <= _FIELDS[cls]:  # a newer peer's fields: not ours to read
            fields = {name: value for name, value in fields.items() if name in _FIELDS[cls]}
        for name, convert in _decoders.get(cls, {}).items():
            if name in fields:
                fields[name] = convert(fields[name])
        return cls(**fields)
    except (TypeError, ValueError) as e:  # a field missing, or a nested one malformed
        raise ProtocolError(f"a malformed {cls.op!r} message: {e}") from e


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream (the peer closed or died) or when the peer
    sent what is not this protocol (logged: the caller closes the connection)."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ProtocolError(f"a {size}-byte frame: not the engine protocol")
        return decode(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    except ProtocolError as e:
        log.error("a broken peer on the engine socket: %s", e)
        return None
