"""The dynamic batcher on its own, with a recording fake graph."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from bridle.runtime.batcher import Batcher, BatchSpec
from bridle.runtime.errors import EngineError


class FakeGraph:
    """Doubles its input; records every batch size; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fetched: list[list[str] | None] = []  # the output names each run was asked for
        self.delay, self.fail = delay, fail

    def __call__(self, signal: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        self.batches.append(len(signal))
        self.fetched.append(outputs)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("graph exploded")
        every = {"out": signal * 2, "sum": signal.sum(axis=1)}
        return every if outputs is None else {k: every[k] for k in outputs}


def make(graph: FakeGraph, **kw) -> Batcher:
    options = {"max_batch_size": 8, "max_wait_s": 0.05, "queue_size": 64, "timeout_s": 5.0} | kw
    return Batcher("fake", graph, BatchSpec(**options))


async def _with(batcher: Batcher, work):
    """Start `batcher`, await `work()` (a coroutine factory, run inside the loop), stop it."""
    batcher.start()
    try:
        return await work()
    finally:
        await batcher.stop()


def rows(i: int, k: int = 1) -> np.ndarray:
    return np.full((k, 3), float(i), dtype=np.float32)  # (k, 3)


def test_concurrent_requests_share_one_run_and_get_their_own_rows() -> None:
    graph = FakeGraph()
    b = make(graph)
    outs = asyncio.run(_with(b, lambda: asyncio.gather(*(b.submit(rows(i)) for i in range(8)))))
    assert graph.batches == [8]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["out"], rows(i) * 2)
        np.testing.assert_array_equal(out["sum"], [3.0 * i])


def test_batches_never_exceed_max_and_large_requests_are_split() -> None:
    graph = FakeGraph()
    b = make(graph, max_batch_size=4)
    big = np.arange(30, dtype=np.float32).reshape(10, 3)  # 10 rows > 4
    outs = asyncio.run(
        _with(b, lambda: asyncio.gather(b.submit(big), *(b.submit(rows(i, 3)) for i in range(3))))
    )
    assert max(graph.batches) <= 4 and sum(graph.batches) == 19
    np.testing.assert_array_equal(outs[0]["out"], big * 2)
    for i, out in enumerate(outs[1:]):
        np.testing.assert_array_equal(out["out"], rows(i, 3) * 2)


def test_a_lone_request_waits_for_max_wait_then_runs_alone() -> None:
    graph = FakeGraph()
    b = make(graph, max_wait_s=0.2, timeout_s=30.0)

    async def timed() -> float:
        t = time.monotonic()
        await b.submit(rows(1))  # a batch that never fills: it must start once max_wait has passed
        return time.monotonic() - t

    elapsed = asyncio.run(_with(b, timed))
    assert elapsed >= 0.2 and graph.batches == [1]


def test_full_queue_refuses_with_retry_after() -> None:
    graph = FakeGraph(delay=0.3)
    b = make(graph, max_batch_size=1, max_wait_s=0.0, queue_size=2)

    async def flood() -> list:
        return await asyncio.gather(*(b.submit(rows(i)) for i in range(6)), return_exceptions=True)

    results = asyncio.run(_with(b, flood))
    refused = [r for r in results if isinstance(r, EngineError)]
    assert refused and all(r.code == "queue_full" and r.retry_after_s == 1 for r in refused)
    assert sum(isinstance(r, dict) for r in results) == 2  # exactly the queue's capacity got through


def test_timeout_is_503_and_the_request_leaves_the_queue() -> None:
    graph = FakeGraph()
    b = make(graph, max_batch_size=8, max_wait_s=1.0, timeout_s=0.1)

    async def late() -> int:
        with pytest.raises(EngineError) as e:
            await b.submit(rows(1))
        assert (e.value.retry_after_s is not None, e.value.code) == (True, "timeout")
        return b.depth

    assert asyncio.run(_with(b, late)) == 0
    assert graph.batches == []


def test_a_failing_graph_fails_its_requests_not_the_worker() -> None:
    graph = FakeGraph(fail=True)
    b = make(graph, max_wait_s=0.0)

    async def twice() -> None:
        for _ in range(2):
            with pytest.raises(EngineError) as e:
                await b.submit(rows(1))
            assert e.value.code == "inference_failed"

    asyncio.run(_with(b, twice))
    assert graph.batches == [1, 1]


class ConcurrencyProbe(FakeGraph):
    """A slow graph that records how many of its runs overlap."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def __call__(self, signal: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().__call__(signal, outputs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("runs", [1, 2, 3])
def test_at_most_concurrent_runs_batches_run_at_once(runs: int) -> None:
    graph = ConcurrencyProbe(delay=0.05)
    b = make(graph, max_batch_size=2, max_wait_s=0.0, concurrent_runs=runs)
    outs = asyncio.run(_with(b, lambda: asyncio.gather(*(b.submit(rows(i)) for i in range(12)))))
    assert graph.most_at_once == runs
    assert sum(graph.batches) == 12 and max(graph.batches) <= 2
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["out"], rows(i) * 2)


class GatedGraph(FakeGraph):
    """A graph whose runs block until `release()`; `started` counts the runs that began."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = 0

    def __call__(self, signal: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        self.started += 1
        self.gate.wait(30)
        return super().__call__(signal, outputs)

    def release(self) -> None:
        self.gate.set()


async def until(condition, timeout_s: float = 10.0) -> None:
    """Yield to the loop until `condition()` holds (an order of events, not a latency bound)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def test_while_a_run_is_busy_a_free_run_starts_without_waiting() -> None:
    graph = GatedGraph()
    # a batch would wait a minute to fill: the second run must start long before that
    b = make(graph, max_batch_size=8, max_wait_s=60.0, concurrent_runs=2, timeout_s=120.0)

    async def work() -> int:
        b.spec = replace(b.spec, max_wait_s=0.0)  # the first, lone request starts at once
        first = asyncio.ensure_future(b.submit(rows(0)))
        await until(lambda: graph.started == 1)
        b.spec = replace(b.spec, max_wait_s=60.0)
        second = asyncio.ensure_future(b.submit(rows(1)))
        await until(lambda: graph.started == 2)  # while the first run is still blocked
        running_together = graph.started
        graph.release()
        await asyncio.gather(first, second)
        return running_together

    assert asyncio.run(_with(b, work)) == 2
    assert graph.batches == [1, 1]


def test_stopping_fails_running_and_waiting_requests_with_503() -> None:
    graph = GatedGraph()
    b = make(graph, max_batch_size=1, max_wait_s=0.0, concurrent_runs=1)

    async def work() -> list[object]:
        b.start()
        submitted = [asyncio.ensure_future(b.submit(rows(i))) for i in range(3)]
        await until(lambda: graph.started == 1)  # request 0 runs (blocked), 1 and 2 wait
        await b.stop()
        results = await asyncio.gather(*submitted, return_exceptions=True)
        assert not graph.gate.is_set(), "stop() waited for the running batch"
        graph.release()
        return results

    results = asyncio.run(work())
    assert all(isinstance(r, EngineError) and r.retry_after_s is not None for r in results), results
    assert all(r.code == "shutting_down" for r in results)


def test_free_runs_share_what_waits_evenly() -> None:
    graph = ConcurrencyProbe(delay=0.2)
    b = make(graph, max_batch_size=16, max_wait_s=0.05, concurrent_runs=2)
    asyncio.run(_with(b, lambda: asyncio.gather(*(b.submit(rows(i)) for i in range(16)))))
    assert graph.batches == [8, 8]  # not 16 on one run while the other idles
    assert graph.most_at_once == 2


def test_a_batch_fetches_the_union_of_its_requests_outputs_and_each_gets_its_own() -> None:
    graph = FakeGraph()
    b = make(graph)

    async def work():
        return await asyncio.gather(b.submit(rows(1), ["sum"]), b.submit(rows(2), ["sum"]))

    first, second = asyncio.run(_with(b, work))
    assert graph.fetched == [["sum"]] and set(first) == set(second) == {"sum"}
    graph = FakeGraph()
    b = make(graph)

    async def mixed():
        return await asyncio.gather(b.submit(rows(1), ["sum"]), b.submit(rows(2), ["out"]))

    only_sum, only_out = asyncio.run(_with(b, mixed))
    assert graph.fetched == [["out", "sum"]]
    assert set(only_sum) == {"sum"} and set(only_out) == {"out"}
    np.testing.assert_array_equal(only_out["out"], rows(2) * 2)
    graph = FakeGraph()
    b = make(graph)
    (out,) = asyncio.run(_with(b, lambda: asyncio.gather(b.submit(rows(3)))))
    assert graph.fetched == [None] and set(out) == {"out", "sum"}  # None: every output


@pytest.mark.parametrize("runs", [1, 3])
def test_warm_up_runs_once_on_each_runner_thread_and_batches_run_on_those_threads(runs: int) -> None:
    warmed: list[str] = []
    served: list[str] = []

    def run(signal: np.ndarray, outputs) -> dict[str, np.ndarray]:
        served.append(threading.current_thread().name)
        time.sleep(0.02)
        return {"out": signal}

    b = Batcher("fake", run, BatchSpec(1, 0.0, 64, 5.0, concurrent_runs=runs))

    async def work():
        names = await b.warm_up(lambda: warmed.append(threading.current_thread().name))
        await asyncio.gather(*(b.submit(rows(i)) for i in range(4 * runs)))
        return names

    names = asyncio.run(_with(b, work))
    assert sorted(names) == sorted(warmed) and len(set(warmed)) == runs  # one call on each of `runs` threads
    assert all(n.startswith("ort-fake") for n in warmed)
    assert set(served) <= set(warmed)  # the batches ran on the threads that were warmed up


def test_a_request_cancelled_behind_others_leaves_the_queue_and_the_rest_are_served() -> None:
    """A client that leaves mid-queue (the service cancels its request): it is withdrawn from behind the
    others (the queue compares requests by identity, never their arrays), and is never run."""
    graph = FakeGraph()
    b = make(graph, max_batch_size=8, max_wait_s=0.3)

    async def work() -> list:
        waiting = [asyncio.ensure_future(b.submit(rows(i, 2))) for i in range(3)]
        await asyncio.sleep(0.05)  # all three queued, the batch still gathering
        waiting[1].cancel()
        return await asyncio.gather(*waiting, return_exceptions=True)

    first, cancelled, third = asyncio.run(_with(b, work))
    assert isinstance(cancelled, asyncio.CancelledError)
    assert graph.batches == [4]  # the two that stayed, in one run
    np.testing.assert_array_equal(first["out"], rows(0, 2) * 2)
    np.testing.assert_array_equal(third["out"], rows(2, 2) * 2)
