"""The engine and a front end's client in one event loop over socket pairs (tests/runtime/engine_link.py):
every message type crosses the link for real, a cancelled request, a broken peer on either side, a full
slot ring, and the two engines of bridle/runtime/interface.py answering alike. Real ONNX Runtime
sessions of an exported micro model, a real shared-memory ring."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import uvloop
from engine_link import WAIT_S, InProcess, raw_front_end, until

from bridle.runtime import wire
from bridle.runtime.client import EngineListener
from bridle.runtime.errors import EngineError
from bridle.runtime.interface import InferenceEngine
from bridle.runtime.wire import HEADER, Cancel, Done, Failed, Hello, ModelInfo, Run, Welcome

V1 = "micro-audio@1"
V2 = "micro-audio@2"


def expected(link: InProcess, key: str, rows: np.ndarray) -> np.ndarray:
    """The embedding of `rows` from one ONNX Runtime run, without the engine."""
    return link.model(key).run("encoder", rows, ["embedding"])["embedding"]


# ---- runs ------------------------------------------------------------------------------------------


def test_a_run_comes_back_with_the_graphs_outputs(model_root: Path) -> None:
    """Hello -> Welcome, then Run -> Done: the rows go through the ring, the outputs come back through
    it; a request larger than a slot goes in several parts and comes back whole."""

    async def go() -> None:
        async with InProcess([model_root], slot_rows=2) as link:
            assert link.client.ready
            instance = link.model(V1).instance
            rows = link.rows(V1, 5)  # 3 parts of at most 2 rows
            out = await link.client.submit(instance, "encoder", rows, ["embedding"])
            assert set(out) == {"embedding"}
            np.testing.assert_allclose(out["embedding"], expected(link, V1, rows), atol=1e-5)
            every = await link.client.submit(instance, "tokenizer", rows[:1])  # all outputs
            assert {"codes", "quantized"} <= set(every)
            assert link.free_slots() == link.slots

    asyncio.run(go())


def test_a_run_the_engine_cannot_do_fails_with_its_code(model_root: Path) -> None:
    """Run -> Failed: the engine's error reaches the caller as the same `EngineError`."""

    async def go() -> None:
        async with InProcess([model_root]) as link:
            with pytest.raises(EngineError) as failed:
                await link.client.submit("no-such-load#9", "encoder", link.rows(V1, 1))
            assert failed.value.code == "unknown_model"
            assert link.free_slots() == link.slots  # the slot came back with the answer

    asyncio.run(go())


def test_both_engines_answer_alike(model_root: Path) -> None:
    """The in-process engine and the engine's client are one interface: the same call, the same answer."""

    async def go() -> None:
        async with InProcess([model_root]) as link:
            engines: list[InferenceEngine] = [link.local, link.client]
            rows = link.rows(V1, 3, seed=1)
            instance = link.model(V1).instance
            local, remote = [await e.submit(instance, "encoder", rows, ["embedding"]) for e in engines]
            np.testing.assert_array_equal(local["embedding"], remote["embedding"])
            assert all(e.ready for e in engines) and not any(e.on_gpu for e in engines)

    asyncio.run(go())


# ---- a cancelled request -------------------------------------------------------------------------


def test_a_cancelled_request_leaves_the_engines_queue_and_frees_its_slot(model_root: Path) -> None:
    """A caller that leaves: Cancel reaches the engine, which drops the queued part and answers it
    Failed("cancelled"); the slot is free only then (the engine might still have written into it)."""

    async def go() -> None:
        async with InProcess([model_root], max_batch_size=8, max_wait_s=30.0) as link:
            instance = link.model(V1).instance
            waiting = asyncio.create_task(link.client.submit(instance, "encoder", link.rows(V1, 1)))
            await until(lambda: link.queued(V1) == 1, "the part queued in the engine")
            assert link.free_slots() == link.slots - 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await until(lambda: link.queued(V1) == 0, "the engine to drop the part")
            await until(lambda: link.free_slots() == link.slots, "the slot to come back")
            await served_on(link)

    asyncio.run(go())


async def served_on(link: InProcess) -> None:
    """The link still serves: a request that fills a batch (so it does not wait for company) is
    answered with its own outputs."""
    rows = link.rows(V1, 8, seed=5)  # max_batch_size rows, in two parts of a slot each
    out = await asyncio.wait_for(
        link.client.submit(link.model(V1).instance, "encoder", rows, ["embedding"]), WAIT_S
    )
    np.testing.assert_allclose(out["embedding"], expected(link, V1, rows), atol=1e-5)


# ---- a full ring ---------------------------------------------------------------------------------


def test_a_full_ring_holds_the_next_part_until_a_slot_is_free(model_root: Path) -> None:
    """Two slots, three parts: two reach the engine (where they wait for company, `max_wait_s`), the
    third waits in the front end, not in the engine's queue, until an answer frees a slot; then it runs
    too, and every answer is its own."""

    async def go() -> None:
        async with InProcess([model_root], slots=2, slot_rows=1, max_batch_size=8, max_wait_s=2.0) as link:
            instance = link.model(V1).instance
            rows = [link.rows(V1, 1, seed=i) for i in range(3)]
            parts = [
                asyncio.create_task(link.client.submit(instance, "encoder", r, ["embedding"])) for r in rows
            ]
            await until(lambda: link.queued(V1) == 2, "two parts queued in the engine")
            await asyncio.sleep(0.05)
            assert link.free_slots() == 0 and link.client.in_flight == 2  # the third was not sent
            assert link.queued(V1) == 2 and not any(p.done() for p in parts)
            outs = await asyncio.wait_for(asyncio.gather(*parts), WAIT_S)
            for r, out in zip(rows, outs, strict=True):
                np.testing.assert_allclose(out["embedding"], expected(link, V1, r), atol=1e-5)
            assert link.free_slots() == 2

    asyncio.run(go())


# ---- a broken peer -------------------------------------------------------------------------------


def test_when_the_engine_goes_its_work_in_flight_fails_and_the_client_reconnects(model_root: Path) -> None:
    """The engine's end closes (its process died): every part in flight fails at once with
    `engine_unavailable` (503 + Retry-After in the service), its slot is free, the client is not ready;
    once the engine is back it reconnects and serves."""

    async def go() -> None:
        async with InProcess([model_root], max_batch_size=8, max_wait_s=30.0) as link:
            instance = link.model(V1).instance
            held = asyncio.create_task(link.client.submit(instance, "encoder", link.rows(V1, 1)))
            await until(lambda: link.queued(V1) == 1, "the part queued in the engine")
            await link.kill_engine_side()
            with pytest.raises(EngineError) as failed:
                await asyncio.wait_for(held, WAIT_S)
            assert failed.value.code == "engine_unavailable" and failed.value.retry_after_s == 1
            await until(lambda: not link.client.ready, "the client to see the engine gone")
            assert link.free_slots() == link.slots
            with pytest.raises(EngineError):  # while it is down, a request fails at once
                await link.client.submit(instance, "encoder", link.rows(V1, 1))
            link.down = False
            await asyncio.wait_for(link.client.warm_up(), WAIT_S)
            await served_on(link)

    asyncio.run(go())


def test_a_part_sent_while_the_engines_socket_is_closing_fails_as_unavailable(model_root: Path) -> None:
    """The engine's socket closes and, before the client's reader has seen it, a request comes (the soak
    of issue 40 got a 500 here: the write raised on the closed transport): it fails with
    `engine_unavailable`, and its slots are free."""

    async def go() -> None:
        async with InProcess([model_root], slot_rows=2) as link:
            instance = link.model(V1).instance
            link.client._writer.transport.abort()  # closing now; the reader learns of it a turn later
            with pytest.raises(EngineError) as failed:
                await link.client.submit(instance, "encoder", link.rows(V1, 5))  # 3 parts
            assert failed.value.code == "engine_unavailable"
            assert link.free_slots() == link.slots

    uvloop.run(go())  # the front ends' loop (uvicorn's): its write on a closed transport raises


def test_a_front_end_that_breaks_the_protocol_is_dropped_and_its_work_cancelled(model_root: Path) -> None:
    """A peer that sends what is not a message (after a proper hello and a queued run) is
    disconnected: the engine forgets the link and cancels its queued work; the engine serves on."""

    async def go() -> None:
        async with InProcess([model_root], max_batch_size=8, max_wait_s=30.0) as link:
            async with raw_front_end(link) as (reader, writer, served):
                writer.write(wire.encode(Hello(link.ring.spec, link.slot_rows)))
                welcome = await asyncio.wait_for(wire.read(reader), WAIT_S)
                assert isinstance(welcome, Welcome) and V1 in welcome.models
                assert isinstance(welcome.models[V1], ModelInfo)
                rows = link.rows(V1, 1)
                link.ring.array(link.slots - 1, 0, rows.dtype.name, rows.shape)[...] = rows
                writer.write(
                    wire.encode(Run(1, link.slots - 1, welcome.models[V1].instance, "encoder", 1, None))
                )
                await until(lambda: link.queued(V1) == 1, "the raw run queued")
                assert len(link.engine.links) == 2  # the client's and this one
                writer.write(HEADER.pack(9) + b"not json!")
                answers = []  # until the engine closes the connection: its queued run, cancelled
                while (answer := await asyncio.wait_for(wire.read(reader), WAIT_S)) is not None:
                    answers.append(answer)
                assert answers in ([], [Failed(1, "cancelled", "cancelled")])
                await asyncio.wait_for(served, WAIT_S)
                assert len(link.engine.links) == 1
                await until(lambda: link.queued(V1) == 0, "the dropped front end's run to leave the queue")
            assert link.client.ready  # the other front end never noticed

    asyncio.run(go())


def test_a_connection_that_does_not_start_with_hello_is_closed(model_root: Path) -> None:
    async def go() -> None:
        async with InProcess([model_root]) as link, raw_front_end(link) as (reader, writer, served):
            writer.write(wire.encode(Cancel(1)))
            assert await asyncio.wait_for(wire.read(reader), WAIT_S) is None
            await asyncio.wait_for(served, WAIT_S)
            assert len(link.engine.links) == 1  # only the client's

    asyncio.run(go())


def test_an_engine_answer_for_no_request_is_ignored(model_root: Path) -> None:
    """An answer whose id the client never sent (or already had) frees no one else's slot."""

    async def go() -> None:
        async with InProcess([model_root]) as link:
            link.client._receive(Done(12345, []), link.client._writer)  # type: ignore[arg-type]
            link.client._receive(Failed(12346, "x", "y"), link.client._writer)  # type: ignore[arg-type]
            assert link.free_slots() == link.slots and link.client.ready

    asyncio.run(go())


# ---- reloads -------------------------------------------------------------------------------------


class Recorder(EngineListener):
    """A front end's side of the reloads, recorded; `refuse`: its prepare fails with that reason."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.events: list[tuple[str, object]] = []
        self.link: InProcess | None = None

    async def hello(self, models: dict[str, ModelInfo]) -> None:
        self.events.append(("hello", sorted(models)))

    async def prepare(self, seq: int, models: dict[str, ModelInfo]) -> str | None:
        self.events.append(("prepare", sorted(models)))
        return self.refuse

    def commit(self, seq: int) -> None:
        self.events.append(("commit", seq))
        assert self.link is not None
        self.link.client.release(seq)  # no request of this front end holds the replaced loads

    def abort(self, seq: int) -> None:
        self.events.append(("abort", seq))


def test_a_reload_prepares_commits_and_releases_through_the_front_end(model_root: Path) -> None:
    """Reload -> Prepare -> Prepared -> Commit -> Committed -> Reloaded; a replaced load stops once the
    front end sends Release."""

    async def go() -> None:
        recorder = Recorder()
        async with InProcess([model_root], listener=recorder) as link:
            recorder.link = link
            shutil.copytree(model_root / "micro-audio" / "1", model_root / "micro-audio" / "2")
            answer = await asyncio.wait_for(link.client.reload(), WAIT_S)
            assert answer == {"ok": True, "loaded": [V2], "unloaded": [], "models": [V1, V2]}
            assert recorder.events == [("hello", [V1]), ("prepare", [V1, V2]), ("commit", 1)]

            old = link.model(V1).instance
            shutil.rmtree(model_root / "micro-audio" / "1")
            answer = await asyncio.wait_for(link.client.reload(), WAIT_S)
            assert answer == {"ok": True, "loaded": [], "unloaded": [V1], "models": [V2]}
            # released by the front end: the old load's batchers stop and it is forgotten
            await until(lambda: old not in link.local.registry.models, "the replaced load to go")
            assert not any(instance == old for instance, _ in link.local.registry.batchers)

            nothing = await asyncio.wait_for(link.client.reload(), WAIT_S)
            assert nothing == {"ok": True, "loaded": [], "unloaded": [], "models": [V2]}

    asyncio.run(go())


def test_a_front_end_that_cannot_prepare_aborts_the_reload(model_root: Path) -> None:
    """Prepared(error) -> Abort: what served serves on, and the answer says why."""

    async def go() -> None:
        recorder = Recorder(refuse="no room for a new manifest")
        async with InProcess([model_root], listener=recorder) as link:
            recorder.link = link
            shutil.copytree(model_root / "micro-audio" / "1", model_root / "micro-audio" / "2")
            answer = await asyncio.wait_for(link.client.reload(), WAIT_S)
            assert answer["ok"] is False and answer["models"] == [V1]
            assert "no room for a new manifest" in answer["message"]
            assert recorder.events == [("hello", [V1]), ("prepare", [V1, V2]), ("abort", 1)]
            assert sorted(link.local.registry.current) == [V1]

    asyncio.run(go())
