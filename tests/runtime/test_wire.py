"""The engine protocol's messages on their own: each survives a frame, a peer's newer fields are skipped,
and what is not a message is refused (bridle/runtime/wire.py)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bridle.runtime import wire
from bridle.runtime.slots import RingSpec
from bridle.runtime.wire import (
    HEADER,
    MAX_FRAME,
    Abort,
    Cancel,
    Commit,
    Committed,
    Done,
    Failed,
    Hello,
    ModelInfo,
    Placed,
    Prepare,
    Prepared,
    ProtocolError,
    Release,
    Reload,
    Reloaded,
    Run,
    Welcome,
)

INFO = ModelInfo(
    "micro-audio@1#3", "/models/micro-audio/1", "1", "ab12", ["CPUExecutionProvider"], {"CPU": {}}
)
SAMPLES = [
    Hello(RingSpec("bridle-ring-0", 8, 4096), 16),
    Run(7, 3, "micro-audio@1#3", "encoder", 4, ["embedding"]),
    Run(8, 0, "micro-audio@1#3", "tokenizer", 1, None),
    Cancel(7),
    Reload(2),
    Prepared(5),
    Prepared(5, "cannot read manifest.json"),
    Committed(5),
    Release(5),
    Welcome({"micro-audio@1": INFO}),
    Done(7, [Placed("embedding", "float32", [4, 64], 8192), Placed("logits", "float32", [4, 4], 9216)]),
    Failed(7, "queue_full", "the queue is full", 1),
    Failed(8, "inference_failed", "the graph failed"),
    Prepare(5, {"micro-audio@1": INFO}),
    Commit(5),
    Abort(5),
    Reloaded(2, True, ["micro-audio@1", "micro-audio@2"], ["micro-audio@2"], []),
    Reloaded(3, False, ["micro-audio@1"], message="micro-audio/2: no manifest.json"),
    Run(9, 1, "micro-audio@1#3", "encoder", 2, None, {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}),
]


def frame_body(message: wire.Message) -> bytes:
    frame = wire.encode(message)
    (size,) = HEADER.unpack(frame[: HEADER.size])
    assert size == len(frame) - HEADER.size
    return frame[HEADER.size :]


def test_every_message_type_has_a_sample_here() -> None:
    assert {type(m) for m in SAMPLES} == set(wire._CLASSES.values())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.op}")
def test_every_message_survives_a_frame(message: wire.Message) -> None:
    decoded = wire.decode(frame_body(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_nested_fields_come_back_typed() -> None:
    hello = wire.decode(frame_body(SAMPLES[0]))
    assert isinstance(hello, Hello) and isinstance(hello.ring, RingSpec)
    done = wire.decode(frame_body(SAMPLES[10]))
    assert isinstance(done, Done) and all(isinstance(p, Placed) for p in done.outputs)
    assert done.outputs[0].offset == 8192
    welcome = wire.decode(frame_body(SAMPLES[9]))
    assert isinstance(welcome, Welcome) and welcome.models["micro-audio@1"] == INFO


def test_a_newer_peers_field_is_skipped_and_a_missing_optional_field_takes_its_default() -> None:
    """How a field is added compatibly: an old reader skips it, a new reader defaults it."""
    newer = {"op": "run", "id": 1, "slot": 0, "model": "m#1", "graph": "encoder", "rows": 2}
    newer |= {"outputs": None, "deadline_ms": 250}  # a field this version does not know
    assert wire.decode(orjson.dumps(newer)) == Run(1, 0, "m#1", "encoder", 2, None)
    older = {"op": "failed", "id": 4, "code": "timeout", "message": "no result"}  # no retry_after_s
    assert wire.decode(orjson.dumps(older)) == Failed(4, "timeout", "no result", None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",  # not an object
        b'{"id": 1}',  # no op
        b'{"op": "launch", "id": 1}',  # an op no one knows
        b'{"op": "run", "id": 1}',  # required fields missing
        b'{"op": "hello", "ring": [1, 2], "rows": 4}',  # a nested field of the wrong shape
    ],
)
def test_what_is_not_a_message_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode(body)


def read_from(data: bytes) -> wire.Message | None:
    async def go() -> wire.Message | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await wire.read(reader)

    return asyncio.run(go())


def test_read_gives_the_next_message_and_none_at_the_end() -> None:
    assert read_from(wire.encode(Cancel(3)) + wire.encode(Cancel(4))) == Cancel(3)
    assert read_from(b"") is None  # the peer closed
    assert read_from(wire.encode(Cancel(3))[:-2]) is None  # the peer died mid-frame


def test_a_broken_peer_ends_the_stream_instead_of_raising() -> None:
    assert read_from(HEADER.pack(MAX_FRAME + 1) + b"x" * 16) is None  # a frame no message needs
    assert read_from(HEADER.pack(5) + b"hello") is None  # not JSON
    assert read_from(HEADER.pack(2) + b"{}") is None  # JSON, not a message
