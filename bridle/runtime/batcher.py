"""Dynamic batching: concurrent requests for one model graph are gathered into one ONNX Runtime run.

A `Batcher` runs one model graph under a `BatchSpec` (the device's batching policy, one for every graph).
It holds the requests waiting for a batch (at most `queue_size`; beyond that `submit` raises
`EngineError("queue_full")`, which the service answers with 503 + Retry-After). Its worker takes the
oldest request, waits until `max_batch_size` rows are waiting or `max_wait_s` has passed since that
request arrived, concatenates the rows along the batch axis, runs the graph once in a worker thread (the
event loop never blocks) and hands each request its rows of the outputs it asked for; a batch fetches
the union of its requests' outputs, nothing more (on a GPU every fetched output is a copy back to the
host). Up to `concurrent_runs` batches run at once, each on one of the batcher's `concurrent_runs`
threads (on a CPU, several one-thread runs keep the cores busier than one run spread over them; on a GPU
one run at a time is usual); while they run, the next batch gathers. `warm_up` runs given work on each
of those threads before any request comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bridle.runtime import tracing
from bridle.runtime.errors import EngineError

# (B, ...) and the output names to fetch (None: all) -> {name: (B, ...)}
RunBatch = Callable[[np.ndarray, Sequence[str] | None], dict[str, np.ndarray]]


@dataclass(eq=False)  # compared by identity: `in` and `remove` on the queue must not compare arrays
class _Request:
    rows: np.ndarray  # (k, ...) with k <= max_batch_size
    future: asyncio.Future[dict[str, np.ndarray]]
    outputs: frozenset[str] | None  # the outputs it needs; None: all
    arrived: float = field(default_factory=time.monotonic)
    ran: tuple[float, float, int, int] | None = None  # its batch's run: start, end, rows, requests (traces)


def _union(batch: list[_Request]) -> list[str] | None:
    """The outputs a batch fetches: every one that some request of it needs (None: all)."""
    if any(r.outputs is None for r in batch):
        return None
    return sorted(frozenset().union(*(r.outputs for r in batch if r.outputs is not None)))


@dataclass(frozen=True)
class BatchSpec:
    """How a graph's requests are batched (bridle/service/settings.py's batching knobs, for the device)."""

    max_batch_size: int  # rows per run
    max_wait_s: float  # how long the oldest request waits for company
    queue_size: int  # request parts waiting, at most; beyond: `queue_full`
    timeout_s: float  # a request's wait for its result, at most; beyond: `timeout`
    retry_after_s: int = 1  # what the refusals tell the client
    concurrent_runs: int = 1  # batches running at once, each on its own thread


@dataclass
class BatcherHooks:
    """Callbacks for metrics; each gets plain numbers."""

    on_batch: Callable[[int], None] = lambda rows: None
    on_depth: Callable[[int], None] = lambda depth: None
    on_reject: Callable[[str], None] = lambda reason: None
    on_wait: Callable[[float], None] = lambda seconds: None  # per request part: queued until its run starts
    on_run: Callable[[float], None] = lambda seconds: None  # per batch: the ONNX Runtime call


class Batcher:
    def __init__(self, name: str, run: RunBatch, spec: BatchSpec, hooks: BatcherHooks | None = None) -> None:
        """`run` runs the graph `name` ("model/graph") on a batch; `hooks` hear of each batch."""
        self.name = name
        self.run = run
        self.spec = spec
        self.hooks = hooks or BatcherHooks()
        self._pending: deque[_Request] = deque()
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=spec.concurrent_runs, thread_name_prefix=f"ort-{name}"
        )
        self._free_runs: asyncio.Semaphore | None = None
        self._runs: dict[asyncio.Task[None], list[_Request]] = {}  # running batches
        self._worker: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._free_runs = asyncio.Semaphore(self.spec.concurrent_runs)
        self._worker = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        runs = dict(self._runs)  # a run cancelled before it started never leaves self._runs
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        stopping = EngineError(
            "shutting_down", "the engine is stopping; retry later", self.spec.retry_after_s
        )
        for batch in runs.values():
            _fail(batch, stopping)
        _fail(self._pending, stopping)
        self._pending.clear()
        self._executor.shutdown(wait=False)

    async def warm_up(self, work: Callable[[], None]) -> list[str]:
        """Run `work` once on each of the `concurrent_runs` threads that run the batches, all at once;
        returns the threads' names. Call it before the first batch: a barrier holds each call until all
        have started, so no thread runs two of them (a fresh pool starts a thread per waiting task)."""
        runs = self.spec.concurrent_runs
        barrier = threading.Barrier(runs)

        def on_this_thread() -> str:
            barrier.wait(timeout=60)
            work()
            return threading.current_thread().name

        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(self._executor, on_this_thread) for _ in range(runs)))
        )

    @property
    def depth(self) -> int:
        return len(self._pending)

    # ---- requests ----------------------------------------------------------------------------
    async def submit(self, rows: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on `rows` (k, ...) within the batches of everyone else; the `outputs` named
        (all when None), each (k, ...)."""
        spec = self.spec
        chunks = [rows[i : i + spec.max_batch_size] for i in range(0, len(rows), spec.max_batch_size)]
        if len(self._pending) + len(chunks) > spec.queue_size:
            self.hooks.on_reject("queue_full")
            raise EngineError(
                "queue_full",
                f"the {self.name} queue is full ({spec.queue_size} requests waiting); retry later",
                spec.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        wanted = frozenset(outputs) if outputs is not None else None
        requests = [_Request(chunk, loop.create_future(), wanted) for chunk in chunks]
        self._pending.extend(requests)
        self.hooks.on_depth(len(self._pending))
        self._arrival.set()
        try:
            async with asyncio.timeout(spec.timeout_s):
                parts = [await r.future for r in requests]
        except TimeoutError:
            self._withdraw(requests)
            self.hooks.on_reject("timeout")
            raise EngineError(
                "timeout",
                f"no result from {self.name} within {spec.timeout_s:g} s; retry later",
                spec.retry_after_s,
            ) from None
        except BaseException:
            self._withdraw(requests)
            raise
        if tracing.on():
            _trace(self.name, requests)
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _withdraw(self, requests: list[_Request]) -> None:
        for r in requests:
            if r in self._pending:
                self._pending.remove(r)
            if not r.future.done():
                r.future.cancel()
        self.hooks.on_depth(len(self._pending))

    # ---- the worker --------------------------------------------------------------------------
    async def _serve(self) -> None:
        """Wait for a free run, gather a batch (it grows while every run is busy), start it; repeat."""
        assert self._free_runs is not None, "start() first"
        while True:
            await self._free_runs.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                self._free_runs.release()
                raise
            run = asyncio.get_running_loop().create_task(self._run(batch))
            self._runs[run] = batch

    async def _run(self, batch: list[_Request]) -> None:
        """One ONNX Runtime call for `batch`; each request gets its rows of every output. The rows are
        concatenated on the run's thread, not on the event loop."""
        assert self._free_runs is not None
        try:
            self.hooks.on_depth(len(self._pending))
            started = time.monotonic()
            for r in batch:
                self.hooks.on_wait(started - r.arrived)
            rows = sum(len(r.rows) for r in batch)
            self.hooks.on_batch(rows)
            loop = asyncio.get_running_loop()
            parts = [r.rows for r in batch]
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_parts, parts, _union(batch))
            except Exception as e:  # the graph failed on this batch: each request learns why
                _fail(batch, EngineError("inference_failed", f"{self.name}: {e}"))
                return
            finished = time.monotonic()
            start = 0
            for r in batch:
                r.ran = (started, finished, rows, len(batch))
                end = start + len(r.rows)
                if not r.future.done():
                    names = outputs.keys() if r.outputs is None else r.outputs
                    r.future.set_result({k: outputs[k][start:end] for k in names})
                start = end
        finally:
            self._runs.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._free_runs.release()

    def _run_parts(self, parts: list[np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        """On a run thread: the parts as one batch (B, ...), run; the call is timed (`on_run`)."""
        signal = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (B, ...)
        started = time.perf_counter()
        result = self.run(signal, outputs)
        self.hooks.on_run(time.perf_counter() - started)
        return result

    async def _gather(self) -> list[_Request]:
        """Wait for the oldest request, then for a full batch or its `max_wait_s`; take up to a batch
        (or an even share of what waits, when several runs are free).

        Waiting only pays while no batch runs: when another run keeps the device busy, what has arrived
        starts at once (and the rest arrives for the next free run)."""
        while not self._pending:
            self._arrival.clear()
            await self._arrival.wait()
        spec = self.spec
        waits = not self._runs
        deadline = self._pending[0].arrived + (spec.max_wait_s if waits else 0.0)
        while sum(len(r.rows) for r in self._pending) < spec.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pending:
                break
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrival.wait()
        # share what waits among the free runs (this one included), so that no run idles beside a full one
        free = spec.concurrent_runs - len(self._runs)
        waiting = sum(len(r.rows) for r in self._pending)
        limit = min(spec.max_batch_size, -(-waiting // free))
        batch: list[_Request] = []
        rows = 0
        while self._pending and (not batch or rows + len(self._pending[0].rows) <= limit):
            r = self._pending.popleft()
            rows += len(r.rows)
            batch.append(r)
        if not batch:  # every waiting request withdrew meanwhile
            return await self._gather()
        return batch


def _trace(name: str, requests: list[_Request]) -> None:
    """Each part's wait for a batch (`queue`) and its batch's ONNX Runtime call (`run`), as spans under the
    caller's (bridle/runtime/tracing.py); the batch's rows and requests are attributes of its `run`."""
    for r in requests:
        if r.ran is None:
            continue
        started, finished, rows, count = r.ran
        tracing.record("queue", r.arrived, started, {"bridle.batcher": name, "bridle.rows": len(r.rows)})
        batch = {"bridle.batcher": name, "bridle.batch.rows": rows, "bridle.batch.requests": count}
        tracing.record("run", started, finished, batch)


def _fail(requests: Iterable[_Request], error: EngineError) -> None:
    for r in requests:
        if not r.future.done():
            r.future.set_exception(error)
