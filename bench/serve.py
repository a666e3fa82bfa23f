"""`bridle-serve` as a subprocess on a free loopback port, for the benchmarks that drive it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BUNDLED = sorted(p.parent for p in (REPO / "models").glob("*/manifest.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    process: subprocess.Popen

    def rss_mb(self) -> float:
        """The server process's resident memory now (VmRSS), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")


@contextmanager
def running_service(
    model_dirs: list[str | Path], env: dict[str, str] | None = None, ready_timeout_s: float = 120
) -> Iterator[Service]:
    """`bridle-serve` over `model_dirs` with `env` added to the environment, ready (within
    `ready_timeout_s`); stopped at the end.

    The server's log goes to the parent's stderr, so a traceback behind a 500 is seen."""
    port = free_port()
    env = {**os.environ, "BRIDLE_API_KEY": "", **(env or {})}
    cmd = [sys.executable, "-m", "service.cli", "--port", str(port)]
    for d in model_dirs:
        cmd += ["--model-dir", str(d)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready in {ready_timeout_s:g} s")
            time.sleep(0.2)
        yield Service(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
