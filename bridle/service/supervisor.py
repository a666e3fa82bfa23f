"""`BRIDLE_FRONTENDS=N`: N front-end processes over one engine process, started and kept alive here.

Layout (docs/architecture.md): the supervisor (the `bridle-serve` process) binds the listening socket,
creates one shared-memory ring per front end (bridle/runtime/slots.py) and starts

- the engine process (`bridle.runtime.engine.run_engine`): it loads the models once, runs the batchers and
  listens on a Unix socket once warm;
- N front-end processes: uvicorn on the shared listening socket (the kernel spreads the connections),
  each with HTTP, admission, decoding and windowing, and an `EngineClient` (bridle/runtime/client.py) that
  passes windows through its ring.

It restarts a process that dies: the engine (its front ends answer 503 `engine_unavailable` for the work
it held and are not ready until the next engine listens), or a front end (on a fresh ring; the old one is
unlinked). With `BRIDLE_ENGINE_SPARE` (on without an NVIDIA GPU) a spare engine, started once the engine
listens, waits loaded and warm: when the engine dies the spare takes over at once, and a new spare starts.
An engine that cannot load the models exits `EXIT_BAD_MODELS`, which stops everything. SIGHUP reloads
the models: it is passed on to the engine and the spare (bridle/runtime/engine.py `Engine.reload`; the
children start with SIGHUP blocked, so one sent before the engine can take it neither kills it nor is
lost, and a front end never takes it). On
SIGTERM / SIGINT the front ends drain (what they accepted finishes), then the engine stops, then the
rings are unlinked: the supervisor owns every segment, so a killed child leaks none.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess

from bridle.model.logs import log_to_stderr
from bridle.model.manifest import read_manifest
from bridle.runtime import tracing
from bridle.runtime.client import EngineLink
from bridle.runtime.engine import EXIT_BAD_MODELS, EngineSpec, run_engine
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import model_directories
from bridle.runtime.parent import Parent
from bridle.runtime.slots import RingSpec, SlotRing, slot_bytes
from bridle.service import engine_folders
from bridle.service.engines import hooks_for, local_spec
from bridle.service.memory import hold_mmap_threshold
from bridle.service.metrics import MULTIPROCESS_ENV, Metrics
from bridle.service.server import DrainingServer, server_config
from bridle.service.settings import Settings

log = logging.getLogger("bridle.supervisor")
SPAWN = multiprocessing.get_context("spawn")  # no fork: a child starts clean (no copied threads or sessions)
RESTART_PAUSE_S = 0.5  # between a death soon after the start and the restart (a later death: none)
MAX_PAUSE_S = (
    30.0  # a process that keeps dying soon after its start waits twice as long each time, up to this
)
SOON_S = 10.0  # a death this soon after the start counts as "soon"
# a spare starts this long after the engine listens (after its start, or a takeover): its loading and
# warm-up take the CPU the service's own start, or its recovery, needs first
SPARE_DELAY_S = 10.0
STOP_GRACE_S = 10.0  # after the drain: how long the engine has to stop before SIGKILL


SHM = "/dev/shm"  # where multiprocessing.shared_memory puts the rings


def ring_layout(settings: Settings) -> tuple[int, int]:
    """Rows per slot and bytes per slot of the front ends' rings, from the served models' manifests."""
    manifests = [
        read_manifest(d, check_hashes=False)
        for d, _ in model_directories(settings.model_dirs, settings.precision)
    ]
    return settings.max_batch_size, slot_bytes(manifests, settings.max_batch_size)


def shared_memory_shortfall(settings: Settings) -> str | None:
    """Why /dev/shm cannot hold the front ends' rings (a container's default is 64 MiB), or None. Pages
    are only taken when written, so a short /dev/shm would fail under load (SIGBUS), not at the start."""
    _, per_slot = ring_layout(settings)
    needed = settings.frontends * settings.max_concurrent_requests * per_slot
    free = shutil.disk_usage(SHM).free if os.path.isdir(SHM) else needed
    if needed <= free:
        return None
    return (
        f"{settings.frontends} front ends need {needed / 2**20:.0f} MiB of shared memory for their rings"
        f" ({settings.max_concurrent_requests} slots of {per_slot / 2**20:.1f} MiB each), and {SHM} has"
        f" {free / 2**20:.0f} MiB free: give it more (docker run --shm-size, compose shm_size), or lower"
        " BRIDLE_MAX_CONCURRENT_REQUESTS or BRIDLE_MAX_BATCH_SIZE"
    )


def engine_spec(settings: Settings, socket_path: str) -> EngineSpec:
    return EngineSpec(local_spec(settings, settings.device_id[0]), socket_path)


def run_front_end(settings: Settings, link: EngineLink, sock: socket.socket) -> None:
    """A front-end process: the app over the engine, served by a `DrainingServer` on the shared socket.
    It drains and stops when the supervisor dies."""
    os.setpgrp()  # a Ctrl-C in the terminal reaches the supervisor only; it stops the children in order
    os.nice(settings.frontend_nice)  # the engine's batches before parsing and refusing (settings.py)
    hold_mmap_threshold()  # freed large blocks go back to the system (bridle/service/memory.py)
    log_to_stderr()
    from bridle.service.app import create_app  # here: the supervisor process never builds the app

    app = create_app(settings, engine=link)
    server = DrainingServer(
        server_config(app, settings), app.state.bridle.admission, settings.drain_timeout_s
    )
    # the supervisor was killed: drain and go
    Parent().on_death(lambda: os.kill(os.getpid(), signal.SIGTERM))
    server.run(sockets=[sock])


def _engine_main(spec: EngineSpec, go: Any | None = None) -> None:
    os.setpgrp()  # a Ctrl-C in the terminal reaches the supervisor only: it stops the engine last
    hold_mmap_threshold()  # freed large blocks go back to the system (bridle/service/memory.py)
    parent = Parent()
    metrics = Metrics.create()  # into the folder the front ends' /metrics read (multiprocess mode)
    tracing.start("engine")  # when OTEL_EXPORTER_OTLP_ENDPOINT asks: its spans go out from here
    try:
        run_engine(spec, hooks_for(metrics), go)
    finally:
        if not parent.alive():  # the supervisor was killed: no one else removes its folder
            shutil.rmtree(Path(spec.socket_path).parent, ignore_errors=True)


@contextlib.contextmanager
def _sighup_blocked() -> Iterator[None]:
    """A child started in here inherits SIGHUP blocked (the engine unblocks it once it handles it)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _forget_metrics_of(pid: int | None) -> None:
    """A dead child's live gauges (in flight, queue depth) leave the sums; its counters stay counted."""
    if pid is not None and os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid)


@dataclass
class _FrontEnd:
    index: int
    ring: SlotRing
    process: BaseProcess


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slot_rows, self.slot_bytes = ring_layout(settings)
        # the port first: a port in use stops the start before anything is made that would need removing
        config = uvicorn.Config("bridle.service.app:app_from_env", host=settings.host, port=settings.port)
        self.sock = config.bind_socket()
        # what a supervisor killed with SIGKILL (and its engine) left, then a folder named after this one
        engine_folders.remove_stale()
        self.folder = str(engine_folders.make_folder())  # its socket (uvloop takes no abstract one)
        self.spec = engine_spec(settings, str(Path(self.folder) / "engine.sock"))
        # every child records its metrics into files here, and each front end's /metrics adds them up
        metrics_folder = Path(self.folder) / "metrics"
        metrics_folder.mkdir()
        os.environ.setdefault(MULTIPROCESS_ENV, str(metrics_folder))
        self.engine: BaseProcess | None = None
        self.spare: BaseProcess | None = None  # BRIDLE_ENGINE_SPARE: loaded, warm, waiting for `spare_go`
        self.spare_go: Any = None
        self.listening_since: float | None = None  # when the engine's socket was first seen
        self.front_ends: list[_FrontEnd] = []
        self.rings_made = 0
        self.signals = 0
        self.hangups = 0  # SIGHUPs not passed on yet
        self.started: dict[str, float] = {}  # "engine" / "front end i" -> when it last started
        self.pauses: dict[str, float] = {}  # -> the pause before its next restart

    def _start_engine(self) -> None:
        self.engine = SPAWN.Process(target=_engine_main, args=(self.spec,), name="bridle-engine")
        with _sighup_blocked():
            self.engine.start()
        self.started["engine"] = time.monotonic()
        log.info("engine started (pid %d)", self.engine.pid)

    def _start_spare(self) -> None:
        self.spare_go = SPAWN.Event()
        self.spare = SPAWN.Process(target=_engine_main, args=(self.spec, self.spare_go), name="bridle-spare")
        with _sighup_blocked():
            self.spare.start()
        self.started["spare"] = time.monotonic()
        log.info("engine spare started (pid %d)", self.spare.pid)

    def _engine_died(self) -> None:
        """The spare takes over if there is one, else a new engine starts."""
        assert self.engine is not None
        self.listening_since = None  # the next spare waits SPARE_DELAY_S after the recovery
        code = self.engine.exitcode
        if code == EXIT_BAD_MODELS:
            raise ModelLoadError("the engine process could not load the models (its log above says why)")
        log.warning("the engine (pid %s) exited with %s: restarting it", self.engine.pid, code)
        _forget_metrics_of(self.engine.pid)
        if self.spare is not None and self.spare.is_alive():
            self.spare_go.set()
            self.engine, self.spare = self.spare, None
            self.started["engine"] = self.started["spare"]
            log.info("engine started (pid %d, the spare taking over)", self.engine.pid)
            return
        self._pause("engine")
        self._start_engine()

    def _keep_a_spare(self) -> None:
        """A spare `SPARE_DELAY_S` after the engine listens (not beside the service's start or its
        recovery: they would share the CPU), and again after the spare died or took over."""
        if not self.settings.engine_spare or (self.spare is not None and self.spare.is_alive()):
            return
        if self.spare is not None:  # it died while waiting
            if self.spare.exitcode == EXIT_BAD_MODELS:
                raise ModelLoadError("the spare engine could not load the models (its log above says why)")
            log.warning("the engine spare (pid %s) exited with %s", self.spare.pid, self.spare.exitcode)
            _forget_metrics_of(self.spare.pid)
            self.spare = None
            self._pause("spare")
        if not os.path.exists(self.spec.socket_path) or self.signals:
            return
        now = time.monotonic()
        if self.listening_since is None:
            self.listening_since = now
        if now - self.listening_since >= SPARE_DELAY_S:
            self._start_spare()

    def _start_front_end(self, index: int) -> _FrontEnd:
        self.rings_made += 1
        spec = RingSpec(
            f"bridle-{os.getpid()}-{index}-{self.rings_made}",
            self.settings.max_concurrent_requests,
            self.slot_bytes,
        )
        ring = SlotRing.create(spec)
        link = EngineLink(self.spec.socket_path, spec, self.slot_rows, self.settings.retry_after_s)
        process = SPAWN.Process(
            target=run_front_end,
            args=(self.settings, link, self.sock),
            name=f"bridle-front-end-{index}",
        )
        with _sighup_blocked():
            process.start()
        self.started[f"front end {index}"] = time.monotonic()
        log.info("front end %d started (pid %d, ring %s)", index, process.pid, spec.name)
        return _FrontEnd(index, ring, process)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        """The first signal ends the watch (`_stop` drains the front ends); a second stops them at once."""
        self.signals += 1
        if self.signals > 1:
            for f in self.front_ends:
                if f.process.pid is not None and f.process.is_alive():
                    os.kill(f.process.pid, signal.SIGTERM)

    def _on_hangup(self, sig: int, frame: FrameType | None) -> None:
        self.hangups += 1

    def _pass_hangups_on(self) -> None:
        """SIGHUP: the engine and the spare reload the models."""
        if not self.hangups:
            return
        self.hangups = 0
        for engine in (self.engine, self.spare):
            if engine is not None and engine.pid is not None and engine.is_alive():
                os.kill(engine.pid, signal.SIGHUP)
        log.info("SIGHUP: the engine reloads the models")

    def run(self) -> None:
        """Start everything and keep it alive until a signal; then drain and clean up."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            self._start_engine()
            self.front_ends = [self._start_front_end(i) for i in range(self.settings.frontends)]
            self._watch()
        finally:
            self._stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _watch(self) -> None:
        while not self.signals:
            assert self.engine is not None
            spare = [self.spare.sentinel] if self.spare is not None else []
            wait([self.engine.sentinel, *spare, *(f.process.sentinel for f in self.front_ends)], timeout=0.2)
            if self.signals:
                return
            if not self.engine.is_alive():
                self._engine_died()
            self._keep_a_spare()
            self._pass_hangups_on()
            for i, f in enumerate(self.front_ends):
                if not f.process.is_alive():
                    log.warning(
                        "front end %d (pid %s) exited with %s: restarting it",
                        f.index,
                        f.process.pid,
                        f.process.exitcode,
                    )
                    _forget_metrics_of(f.process.pid)
                    f.ring.unlink()
                    f.ring.close()
                    self._pause(f"front end {f.index}")
                    self.front_ends[i] = self._start_front_end(f.index)

    def _pause(self, role: str) -> None:
        """Wait before restarting `role`: not at all after a death long after its start (every moment
        of the restart is an outage); `RESTART_PAUSE_S` after one soon after it, doubled (up to
        `MAX_PAUSE_S`) each time it died soon again, so a process that cannot run does not spin."""
        soon = time.monotonic() - self.started[role] < SOON_S
        if not soon:
            self.pauses.pop(role, None)
            return
        pause = min(MAX_PAUSE_S, 2 * self.pauses.get(role, RESTART_PAUSE_S / 2))
        self.pauses[role] = pause
        until = time.monotonic() + pause
        while not self.signals and time.monotonic() < until:  # a signal ends the pause
            time.sleep(0.05)

    def _stop(self) -> None:
        """Front ends drain first (their requests need the engine), then the engine stops; the rings and
        the engine's folder go last."""
        for f in self.front_ends:
            if f.process.is_alive():
                os.kill(f.process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + self.settings.drain_timeout_s + STOP_GRACE_S
        for f in self.front_ends:
            f.process.join(max(0.0, deadline - time.monotonic()))
            if f.process.is_alive():
                f.process.kill()
                f.process.join()
        for engine in (self.spare, self.engine):
            if engine is not None and engine.is_alive():
                engine.terminate()
                engine.join(STOP_GRACE_S)
                if engine.is_alive():
                    engine.kill()
                    engine.join()
        for f in self.front_ends:
            f.ring.unlink()
            f.ring.close()
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        log.info("stopped")


def serve_processes(settings: Settings) -> None:
    """Serve with `settings.frontends` front-end processes and one engine process until SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        Supervisor(settings).run()
