"""What one overload refusal costs the CPU: `python -m bench.refusal_cost [--seconds 10]`.

Issue 28's two overload goals (served req/s at 400 clients / at 16 >= 0.8, refusal p99 <= 20 ms) pull
against each other on a machine that also runs the clients: wrk's refused clients send again the moment
an answer arrives, so the faster the refusals, the more of them, and each one costs CPU in the server and
in wrk (docs/architecture.md, "Overload on 2 cores: the bound"). This measures the two costs.

wrk's 400 clients post a one-window wav to `/embed` of the small audio model for `--seconds`, against:

1. `bridle-serve` in one process (BRIDLE_FRONTENDS=0) with an in-flight bound of 1, its one slot held by
   a request whose body never comes, so that every answer is a refusal (checked: none is served);
2. the floor: a bare asyncio protocol on the same event loop (uvloop when installed, as uvicorn picks)
   that finds each request with the same head scan (`bridle.service.protocol.plain_request`) and writes the
   same prepared bytes (`bridle.service.middleware.refusal_bytes`) with a new request id, and nothing else:
   no HTTP parser, no uvicorn, no metrics.

For each: refusals/s, the CPU per refusal of the server's process tree and of wrk (from /proc and
getrusage over the measured run; the probe's own requests are a rounding error), the refusals' latency
as 4 paced probe clients see it meanwhile (`bench.service_load.probe`), then the server's cost over the
floor's. Nothing is served here, so these are what refusing alone costs; `bench.engine_load` measures
refusals beside served work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from bench.engine_load import window_wav
from bench.serve import cpu_seconds, free_port, running_service
from bench.service_load import BUNDLED_AUDIO, ProbeResult, drive, export_tiny_audio, probe
from bridle.runtime.engine import event_loop_factory
from bridle.service.middleware import AdmissionState, new_request_id, refusal_bytes
from bridle.service.protocol import plain_request

CLIENTS = 400
WARMUP_S = 2.0


@dataclass(frozen=True)
class Cost:
    refusals_per_s: float
    server_us: float  # server CPU per refusal
    wrk_us: float  # wrk's CPU per refusal
    probe: ProbeResult  # the refusals' latency as 4 paced clients see it meanwhile

    def line(self, label: str) -> str:
        return (
            f"  {label:<52} {self.refusals_per_s:8.0f} refusals/s   server {self.server_us:5.1f} µs CPU each"
            f"   wrk {self.wrk_us:5.1f} µs each   latency p50 {self.probe.refused_p50_ms:5.1f} ms"
            f" p99 {self.probe.refused_p99_ms:5.1f} ms"
        )


def main(seconds: Annotated[float, typer.Option(help="measured seconds per server")] = 10.0) -> None:
    """The CPU one refusal costs bridle-serve and a bare asyncio protocol, and wrk, in one run."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench.refusal_cost needs wrk: `make bench-engine` installs it (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        model = BUNDLED_AUDIO if BUNDLED_AUDIO.is_dir() else export_tiny_audio(Path(tmp))
        body = window_wav(model, Path(tmp))
        size = body.stat().st_size
        env = {"BRIDLE_FRONTENDS": "0", "BRIDLE_MAX_CONCURRENT_REQUESTS": "1"}
        with running_service([model], env) as service, holding_the_slot(service.url, size):
            served = measure(wrk, service.url, body, seconds, service.process.pid)
        with bare_server() as (url, pid):
            floor = measure(wrk, url, body, seconds, pid)
    print(f"refusal cost: wrk, {CLIENTS} clients posting a one-window wav ({size} bytes), {seconds:g} s")
    print(served.line("bridle-serve, one process, its one slot held"))
    print(floor.line(f"bare asyncio protocol ({loop_name()}), same scan and bytes"))
    print(f"  bridle-serve / floor, server CPU per refusal: {served.server_us / floor.server_us:.2f}")


def measure(wrk: str, url: str, body: Path, seconds: float, pid: int) -> Cost:
    drive(wrk, url, body, CLIENTS, WARMUP_S, warmup=0)
    before = cpu_seconds(pid)
    with ThreadPoolExecutor(1) as pool:
        flood = pool.submit(drive, wrk, url, body, CLIENTS, seconds, warmup=0)
        time.sleep(0.5)
        probed = probe(url, body.read_bytes(), seconds - 1)
        result = flood.result()
    used = cpu_seconds(pid) - before
    if result.throughput > 0:
        raise RuntimeError(f"{result.throughput:.1f} req/s were served: the slot was not held")
    refusals = result.requests
    cores = result.client_cores * seconds
    return Cost(refusals / seconds, 1e6 * used / refusals, 1e6 * cores / refusals, probed)


@contextlib.contextmanager
def holding_the_slot(url: str, length: int) -> Iterator[None]:
    """A request admitted to `/embed` whose body never comes: it holds the in-flight slot meanwhile."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        time.sleep(0.5)  # admitted, and waiting for its body
        yield


def loop_name() -> str:
    return "asyncio" if event_loop_factory() is None else "uvloop"


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.refusal_cost", "--bare", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.kill()
        proc.wait()


class BareRefusals(asyncio.Protocol):
    """Answers every request with the service's prepared 503, found by the service's head scan."""

    head, tail = refusal_bytes(AdmissionState(max_in_flight=1, retry_after_s=1), close=False)
    routes = frozenset({b"/embed"})  # the path wrk posts to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.skip = 0

    def data_received(self, data: bytes) -> None:
        if self.skip:
            taken = min(self.skip, len(data))
            self.skip -= taken
            data = data[taken:]
        while data:
            request = plain_request(data, self.routes)
            if request is None:  # wrk's heads arrive whole; anything else is not this benchmark's
                self.transport.close()
                return
            self.transport.write(b"".join([self.head, new_request_id().encode(), b"\r\n", self.tail]))
            self.skip = max(0, request.size - len(data))
            data = data[request.size :]


def run_bare(port: int) -> None:
    async def serve_forever() -> None:
        server = await asyncio.get_running_loop().create_server(BareRefusals, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the engine's choice of loop
        runner.run(serve_forever())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        run_bare(int(sys.argv[2]))
    else:
        typer.run(main)
