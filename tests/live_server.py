"""A real uvicorn server on loopback serving model directories, for tests that talk HTTP to the service."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn


@dataclass
class Server:
    url: str
    client: httpx.Client


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_server(
    model_dirs: list[Path],
    *,
    ready_within: float = 20,
    timeout: float = 20,
    http: str | None = None,
    keep_alive_s: float = 5,
    **settings_overrides,
) -> Iterator[Server]:
    """Start the app in a uvicorn server thread (its lifespan loads the models), wait up to `ready_within`
    seconds for /ready, yield a client whose requests time out after `timeout` s, then shut it down. uvicorn
    parses HTTP as `bridle-serve` does (bridle/service/protocol.py), or with `http` ("h11"); it closes a
    connection idle for `keep_alive_s` (uvicorn's default 5 s)."""
    from bridle.service.app import create_app
    from bridle.service.protocol import http_protocol
    from bridle.service.settings import Settings

    # one ORT thread per run: the tests share two cores with the server
    defaults = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    app = create_app(Settings(model_dirs=model_dirs, **(defaults | settings_overrides)))
    sock = _free_socket()
    protocol = http or http_protocol(app.state.bridle.admission)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=protocol,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = httpx.Client(base_url=url, timeout=timeout)
    deadline = time.monotonic() + ready_within
    while True:
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)
    try:
        yield Server(url, client)
    finally:
        client.close()
        server.should_exit = True
        thread.join(10)
        sock.close()
