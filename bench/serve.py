"""`bridle-serve` as a subprocess on a free loopback port, for the benchmarks that drive it over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BUNDLED = sorted(p.parent for p in (REPO / "models").glob("*/manifest.json"))


def free_port() -> int:
    """A TCP port no process listens on, on any IPv4 address (the kernel picks it: bound to port 0 on all
    interfaces, then released). Free on every interface, so Docker may publish it too; never a fixed port
    such as the 8000 that `make serve` holds."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    process: subprocess.Popen

    def rss_mb(self) -> float:
        """The resident memory (VmRSS) of the server's process tree now, in MB: with front-end processes
        (`BRIDLE_FRONTENDS`) the supervisor, its front ends and its engine."""
        return sum(memory_mb(pid=pid) for pid in _tree(self.process.pid))


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc's children lists."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += _tree(int(child))
    return found


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The CPU time `pid` and its descendants have used so far (with `BRIDLE_FRONTENDS`, the supervisor,
    its front ends and its engine)."""
    return sum(process_cpu_seconds(each) for each in _tree(pid))


def memory_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """`field` of /proc/<pid>/status in MB: VmRSS (resident now) or VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


@contextmanager
def running_server(
    cmd: list[str],
    port: int,
    env: dict[str, str] | None = None,
    ready_path: str = "/ready",
    ready_timeout_s: float = 120,
    name: str = "the service",
    log: list[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `cmd` (an HTTP server that listens on `port`), wait until `ready_path` answers 200 (within
    `ready_timeout_s`), yield its URL and process; stop it at the end. Its log goes to the parent's
    stderr, so a traceback behind a 500 is seen. It runs in a process group of its own: what it started
    and left behind (LitServe's workers outlive their server) is killed with it, so it cannot load the
    next measurement. With `log`, its stderr lines are also appended there as they come."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=None if log is None else subprocess.PIPE,
        text=log is not None,
        start_new_session=True,
    )
    if log is not None:

        def tee() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                sys.stderr.write(line)
                log.append(line)

        threading.Thread(target=tee, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready in {ready_timeout_s:g} s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def running_service(
    model_dirs: list[str | Path],
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120,
    log: list[str] | None = None,
) -> Iterator[Service]:
    """`bridle-serve` over `model_dirs` with `env` added to the environment, ready (within
    `ready_timeout_s`); stopped at the end (SIGTERM). With `log`, its stderr lines are collected."""
    port = free_port()
    cmd = [sys.executable, "-m", "bridle.service.cli", "--port", str(port)]
    for d in model_dirs:
        cmd += ["--model-dir", str(d)]
    env = {**os.environ, "BRIDLE_API_KEY": "", **(env or {})}
    with running_server(cmd, port, env, "/ready", ready_timeout_s, log=log) as (url, proc):
        yield Service(url, proc)


def closed_loop_rate(
    url: str, path: str, body: bytes, content_type: str, clients: int, seconds: float
) -> float:
    """`clients` threads posting `body` to `path` back to back for `seconds` (after one request each to
    warm up); -> completed requests per second, counted from the first completion to the last (whole
    requests only: right for requests that take seconds, where a fixed window cuts many in two).

    A Python client is cheap here: each request takes the server seconds, the client microseconds."""
    from concurrent.futures import ThreadPoolExecutor

    def post(client: httpx.Client) -> None:
        r = client.post(path, content=body, headers={"Content-Type": content_type})
        if r.status_code != 200:
            raise RuntimeError(f"the service answered {r.status_code}: {r.text[:200]}")

    def worker(done: list[float], stop_at: float) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            post(client)
            while time.monotonic() < stop_at:
                post(client)
                done.append(time.monotonic())

    start = time.monotonic()
    done: list[float] = []
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker, done, start + seconds) for _ in range(clients)]:
            f.result()
    done.sort()
    if len(done) < 2:
        raise RuntimeError(f"only {len(done)} requests completed in {seconds} s: run longer")
    return (len(done) - 1) / (done[-1] - done[0])
