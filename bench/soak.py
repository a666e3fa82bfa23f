"""Soak test with faults: `python -m bench.soak [--seconds 600] [--clients 32] [--env KEY=VALUE ...]`
(`make soak`).

Starts `bridle-serve` on the bundled models (bench/serve.py; 2 front ends and the engine by default) and
keeps `--clients` closed-loop clients posting to every media route the app admits (`@admitted`:
/embed, /tokenize, /classify, /features, /v1/embeddings; a route this script cannot call stops it) and
every bundled model (`model=` named, each with files of its modality), half the uploads valid (every
format of bench/fuzz.py) and half damaged (its mutations). Mid-way it kills the engine with SIGKILL
(at 40 % of the run) and a front end (at 70 %); a probe asks /ready every 0.1 s throughout.

It prints the answers by status and error code, the 2xx latency, each fault's outage (from the kill to
the last failed answer, and /ready's time away from 200), the RSS of every process from `--steady`
seconds (minute 2) to the end, and what the service left in /dev/shm and the temporary folder after
its SIGTERM. Exit status 1 when a goal of issue 40 is missed: a 5xx other than 503 `engine_unavailable`
(or `not_ready`, what new work gets while the engine restarts) within a fault's window, any 5xx or
unanswered request outside one, an outage of `--max-outage` (3 s) or more, a front end's RSS growing
by more than `--max-growth` (10 %) from `--steady` to the end, or anything left behind.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from bench.fuzz import CONTENT_TYPES, mutate, seed_files
from bench.serve import BUNDLED, Service, running_service
from bridle.model.manifest import read_manifest

FORMATS_OF = {
    "audio": ("wav", "flac", "mp3", "ogg"),
    "image": ("png", "jpeg", "webp"),
    "video": ("mp4", "webm"),
}
FAULT_WINDOW_S = 15.0  # answers this long after a kill are judged as the fault's
SHM = Path("/dev/shm")


def _multipart(model: str, name: str, data: bytes, ctype: str) -> dict[str, Any]:
    return {"params": {"model": model}, "files": {"file": (name, data, ctype)}}


def _openai(model: str, name: str, data: bytes, ctype: str) -> dict[str, Any]:
    return {"json": {"model": model, "input": f"data:{ctype};base64,{base64.b64encode(data).decode()}"}}


# how to call each media route; an admitted route missing here stops the soak (it would go unsoaked)
CALLS: dict[str, Callable[[str, str, bytes, str], dict[str, Any]]] = {
    "/embed": _multipart,
    "/tokenize": _multipart,
    "/classify": _multipart,
    "/features": _multipart,
    "/v1/embeddings": _openai,
}


def media_routes() -> list[str]:
    """The paths the app admits (bridle/service/routes/admission.py), as the running service declares them."""
    from bridle.service.app import create_app
    from bridle.service.settings import Settings

    routes = create_app(Settings(model_dirs=BUNDLED)).state.bridle.admission.routes
    if routes.patterns:
        raise SystemExit(f"the soak cannot call admitted routes with parameters: {routes.patterns}")
    unknown = sorted(routes.paths - CALLS.keys())
    if unknown:
        raise SystemExit(
            f"the soak does not know how to call the admitted routes {unknown}: add them to CALLS"
        )
    return sorted(routes.paths)


@dataclass
class Answer:
    at: float  # seconds after the start, when the answer came
    path: str
    status: int  # 0: no answer (connection reset, time-out)
    code: str  # the JSON error's code, "" for 2xx
    seconds: float


def _code(r: httpx.Response) -> str:
    if r.status_code < 300:
        return ""
    try:
        error = r.json()["error"]
        return str(error.get("code") or error.get("type"))
    except Exception:  # a body that is not the service's JSON error is itself a finding
        return "not-json"


def client_loop(
    url: str,
    seed: int,
    started: float,
    stop_at: float,
    jobs: list[tuple[str, str, str]],
    files: dict[str, bytes],
    out: list[Answer],
) -> None:
    """Post until `stop_at`: a (route, model, format) at random, half the files damaged."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            path, model, fmt = rng.choice(jobs)
            data = files[fmt]
            if rng.random() < 0.5:
                _, data = mutate(data, rng, files[rng.choice(list(files))])
            request = CALLS[path](model, f"soak.{fmt}", data, CONTENT_TYPES[fmt])
            start = time.monotonic()
            try:
                r = client.post(path, **request)
                status, code = r.status_code, _code(r)
            except httpx.HTTPError as e:
                status, code = 0, type(e).__name__
            now = time.monotonic()
            out.append(Answer(now - started, path, status, code, now - start))


def probe_ready(url: str, started: float, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    """/ready every 0.1 s on a new connection (either front end may answer): (seconds, status or 0)."""
    while not stop.is_set():
        try:
            status = httpx.get(f"{url}/ready", timeout=2).status_code
        except httpx.HTTPError:
            status = 0
        out.append((time.monotonic() - started, status))
        stop.wait(0.1)


class Roles:
    """The pids the supervisor logs (`engine started (pid N`, `engine spare started (pid N)`, `front end
    i started (pid N`)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def pids(self, role: str) -> list[int]:
        pattern = re.compile(rf"{role} started \(pid (\d+)")
        return [int(m.group(1)) for line in list(self.log) if (m := pattern.search(line))]

    def current(self) -> dict[str, int]:
        """The live roles' pids: the engine (a spare that took over logs `engine started` too), its spare
        (BRIDLE_ENGINE_SPARE), the front ends."""
        found = {}
        for role in ("engine", "engine spare", "front end 0", "front end 1", "front end 2", "front end 3"):
            if pids := self.pids(role):
                found[role] = pids[-1]
        if found.get("engine spare") == found.get("engine"):  # it took over; no new spare yet
            del found["engine spare"]
        return found


@dataclass(frozen=True)
class Rss:
    """One process's resident memory at one moment, in MB: VmRSS and its three parts (/proc/PID/status).
    `shmem` is the pages of the shared-memory ring this process has touched, `anon` its private heap."""

    at: float  # seconds after the start
    pid: int
    role: str
    total: float
    anon: float
    file: float
    shmem: float


RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def read_rss(pid: int, at: float, role: str) -> Rss:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in RSS_FIELDS:
            status[key] = int(value.split()[0]) / 1024
    if len(status) < len(RSS_FIELDS):
        raise RuntimeError(f"no {RSS_FIELDS} in /proc/{pid}/status")  # exiting
    return Rss(at, pid, role, *(status[key] for key in RSS_FIELDS))


def sample_rss(roles: Roles, started: float, stop: threading.Event, out: list[Rss]):
    """Every 2 s, each process's RSS and its parts."""
    while not stop.is_set():
        t = time.monotonic() - started
        for role, pid in roles.current().items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, RuntimeError):  # it just died
                out.append(read_rss(pid, t, role))
        stop.wait(2.0)


def _leftovers(supervisor: int) -> list[str]:
    """What the service whose supervisor is `supervisor` has in /dev/shm (its rings, `bridle-<pid>-*`)
    and the temporary folder (its folder, `bridle-engine-<pid>.*`); other services on the machine
    have theirs."""
    tmp = Path(tempfile.gettempdir())
    found = [*SHM.glob(f"bridle-{supervisor}-*"), *tmp.glob(f"bridle-engine-{supervisor}.*")]
    return sorted(str(p) for p in found)


def _outage(kill_at: float, answers: list[Answer], ready: list[tuple[float, int]]) -> dict[str, float]:
    """After a kill: the last failed answer (5xx or none), and the time /ready was away from 200."""
    window = [a for a in answers if kill_at <= a.at <= kill_at + FAULT_WINDOW_S]
    failed = [a.at for a in window if a.status == 0 or a.status >= 500]
    probes = [(t, s) for t, s in ready if kill_at <= t <= kill_at + FAULT_WINDOW_S]
    down = [t for t, s in probes if s != 200]
    back = [t for t, s in probes if s == 200 and down and t > down[0]]
    return {
        "last_failure_s": (max(failed) - kill_at) if failed else 0.0,
        "failed": float(len(failed)),
        "ready_away_s": (back[0] - down[0]) if down and back else (float("inf") if down else 0.0),
    }


def main(
    seconds: Annotated[float, typer.Option()] = 600.0,
    clients: Annotated[int, typer.Option()] = 32,
    steady: Annotated[float, typer.Option(help="RSS is compared from this second (minute 2) on")] = 120.0,
    max_growth: Annotated[
        float, typer.Option(help="percent RSS growth of a front end after --steady")
    ] = 10.0,
    max_outage: Annotated[float, typer.Option(help="seconds a fault may keep answers failing")] = 3.0,
    faults: Annotated[bool, typer.Option(help="SIGKILL the engine and a front end mid-way")] = True,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the server; repeatable")] = None,
    rss_log: Annotated[
        Path | None, typer.Option(help="write the RSS samples (seconds, pid, role, MB) to this file")
    ] = None,
) -> None:
    server_env = {"BRIDLE_FRONTENDS": "2"} | dict(item.split("=", 1) for item in env or [])
    files = seed_files()
    routes = media_routes()
    models = [(m.name, m.modality) for m in (read_manifest(d, check_hashes=False) for d in BUNDLED)]
    jobs = [(path, name, fmt) for path in routes for name, modality in models for fmt in FORMATS_OF[modality]]
    answers: list[Answer] = []
    ready: list[tuple[float, int]] = []
    rss: list[Rss] = []
    kills: list[tuple[str, int, float]] = []
    log: list[str] = []
    roles = Roles(log)
    with running_service(BUNDLED, server_env, log=log) as service:
        started = time.monotonic()
        stop_at = started + seconds
        stop = threading.Event()
        watchers = [
            threading.Thread(target=probe_ready, args=(service.url, started, stop, ready)),
            threading.Thread(target=sample_rss, args=(roles, started, stop, rss)),
        ]
        loops = [
            threading.Thread(
                target=client_loop, args=(service.url, i, started, stop_at, jobs, files, answers)
            )
            for i in range(clients)
        ]
        for t in watchers + loops:
            t.start()
        if faults:
            for role, share in (("engine", 0.4), ("front end 0", 0.7)):
                time.sleep(max(0.0, started + share * seconds - time.monotonic()))
                pid = roles.current()[role]
                # the time before the kill: an answer failed by it may come back before os.kill returns
                kills.append((role, pid, time.monotonic() - started))
                os.kill(pid, signal.SIGKILL)
                print(
                    f"soak: SIGKILL {role} (pid {pid}) at {kills[-1][2]:.1f} s", file=sys.stderr, flush=True
                )
        for t in loops:
            t.join()
        stop.set()
        for t in watchers:
            t.join()
        tree = _tree_pids(service, roles)
        supervisor = service.process.pid
        assert _leftovers(supervisor), "the service's rings and folder are not where the soak looks"
    if rss_log:
        rss_log.write_text(
            "seconds pid role rss_mb anon_mb file_mb shmem_mb\n"
            + "".join(
                f"{r.at:.1f} {r.pid} {r.role.replace(' ', '_')} {r.total:.1f} {r.anon:.1f} {r.file:.1f}"
                f" {r.shmem:.1f}\n"
                for r in rss
            )
        )
    # running_service has sent SIGTERM and waited: the supervisor drained and cleaned up
    time.sleep(1.0)
    left = _leftovers(supervisor)
    alive = sorted(pid for pid in tree if Path(f"/proc/{pid}").exists() and _not_zombie(pid))
    print(
        report(seconds, clients, server_env, routes, models, answers, kills, ready, rss, steady, left, alive)
    )
    failures = verdict(answers, kills, ready, rss, steady, max_growth, max_outage, left, alive)
    for f in failures:
        print(f"  FAILED: {f}")
    print("  verdict: " + ("PASS" if not failures else f"FAIL ({len(failures)})"))
    sys.exit(1 if failures else 0)


def _tree_pids(service: Service, roles: Roles) -> set[int]:
    return {service.process.pid, *(p for role in roles.current() for p in roles.pids(role))}


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _in_fault_window(a: Answer, kills: list[tuple[str, int, float]]) -> str | None:
    for role, _, at in kills:
        if at <= a.at <= at + FAULT_WINDOW_S:
            return role
    return None


ALLOWED_IN_ENGINE_FAULT = {(503, "engine_unavailable"), (503, "not_ready")}


def verdict(answers, kills, ready, rss, steady, max_growth, max_outage, left, alive) -> list[str]:
    failures = []
    for a in answers:
        bad = a.status == 0 or a.status >= 500
        if not bad:
            continue
        fault = _in_fault_window(a, kills)
        if fault is None:
            failures.append(f"{a.status} {a.code} on {a.path} at {a.at:.1f} s, outside any fault")
        elif fault == "engine" and (a.status, a.code) not in ALLOWED_IN_ENGINE_FAULT:
            failures.append(f"{a.status} {a.code} on {a.path} at {a.at:.1f} s, after the engine's kill")
        elif (
            fault.startswith("front end")
            and a.status >= 500
            and (a.status, a.code) not in ALLOWED_IN_ENGINE_FAULT
        ):
            failures.append(f"{a.status} {a.code} on {a.path} at {a.at:.1f} s, after the front end's kill")
    for role, _, at in kills:
        o = _outage(at, answers, ready)
        if max(o["last_failure_s"], o["ready_away_s"]) >= max_outage:
            failures.append(f"{role}'s outage: {o}")
    for g in rss_growth(rss, steady):
        if g.last.role.startswith("front end") and g.percent > max_growth:
            failures.append(
                f"{g.last.role} (pid {g.last.pid}) RSS grew {g.percent:+.1f} % from {g.then.at:.0f} s"
            )
    if left:
        failures.append(f"left behind after SIGTERM: {left}")
    if alive:
        failures.append(f"processes of the service still running after SIGTERM: {alive}")
    return failures[:20] + ([f"... and {len(failures) - 20} more"] if len(failures) > 20 else [])


@dataclass(frozen=True)
class Growth:
    """A process's RSS over the span it is judged on: from `steady` (or, started later, from its start
    plus a minute) to the end; `middle` is the sample half-way through that span."""

    then: Rss
    middle: Rss
    last: Rss

    @property
    def percent(self) -> float:
        return 100 * (self.last.total - self.then.total) / self.then.total

    def line(self) -> str:
        parts = ", ".join(
            f"{name} {getattr(self.then, name):.1f} -> {getattr(self.last, name):.1f}"
            for name in ("anon", "shmem", "file")
        )
        return (
            f"RSS {self.last.role} (pid {self.last.pid}): {self.then.total:.0f} MB at {self.then.at:.0f} s"
            f" -> {self.middle.total:.0f} MB at {self.middle.at:.0f} s -> {self.last.total:.0f} MB at"
            f" {self.last.at:.0f} s ({self.percent:+.1f} %; MB {parts})"
        )


def rss_growth(rss: list[Rss], steady: float) -> list[Growth]:
    """Each process that lived from its judged start to the end (its role is the one it had at the end:
    a spare that took over is the engine)."""
    by_pid: dict[int, list[Rss]] = {}
    for r in rss:
        by_pid.setdefault(r.pid, []).append(r)
    end = max((r.at for r in rss), default=0.0)
    out = []
    for samples in by_pid.values():
        first = samples[0].at
        since = max(steady, first + 60.0) if first > steady else steady
        later = [r for r in samples if r.at >= since]
        if not later or samples[-1].at < end - 5 or later[-1].at - later[0].at < 60:
            continue  # killed, or too short a life to judge
        half = (later[0].at + later[-1].at) / 2
        middle = next(r for r in later if r.at >= half)
        out.append(Growth(later[0], middle, later[-1]))
    return sorted(out, key=lambda g: (g.last.role, g.last.pid))


def report(
    seconds, clients, server_env, routes, models, answers, kills, ready, rss, steady, left, alive
) -> str:
    by = Counter((a.status, a.code) for a in answers)
    served = np.array([a.seconds for a in answers if 200 <= a.status < 300]) * 1000
    lines = [
        f"soak: {seconds:g} s, {clients} clients, env {server_env}, {len(answers)} requests",
        f"  routes {routes}; models {[m for m, _ in models]}",
        "  answers: " + ", ".join(f"{s or 'none'} {c or 'ok'}: {n}" for (s, c), n in sorted(by.items())),
        "  per route: "
        + ", ".join(
            f"{p} {sum(1 for a in answers if a.path == p and 200 <= a.status < 300)}/"
            f"{sum(1 for a in answers if a.path == p)} 2xx"
            for p in routes
        ),
        f"  2xx latency: p50 {np.percentile(served, 50):.0f} ms, p99 {np.percentile(served, 99):.0f} ms"
        if served.size
        else "  no 2xx answer",
    ]
    for role, pid, at in kills:
        o = _outage(at, answers, ready)
        window = Counter(
            (a.status, a.code)
            for a in answers
            if at <= a.at <= at + FAULT_WINDOW_S and (a.status == 0 or a.status >= 500)
        )
        lines.append(
            f"  SIGKILL {role} (pid {pid}) at {at:.1f} s: {o['failed']:.0f} failed answers "
            f"({dict(window)}), the last {o['last_failure_s']:.2f} s after the kill; "
            f"/ready away from 200 for {o['ready_away_s']:.2f} s"
        )
    lines += [f"  {g.line()}" for g in rss_growth(rss, steady)]
    lines.append(f"  left in /dev/shm and the temporary folder after SIGTERM: {left or 'nothing'}")
    lines.append(f"  processes still running after SIGTERM: {alive or 'none'}")
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
