"""Ports for the tests that publish a service: a free one per run, and a decoy on the port a developer's
`make serve` holds (8000), so that a test that talks to the wrong listener is caught, not fooled.

`ComposeTarget` is where one compose test's service answers: a free host port passed to Compose as
`BRIDLE_PORT`, a per-run API key passed as `BRIDLE_API_KEY`, and a compose project of its own
(`COMPOSE_PROJECT_NAME`: its own containers, networks and volumes). Only the containers started with that
environment accept the key, so an answer with status 200 comes from them and not from a process outside
the test that happens to listen on some port.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.serve import free_port
from tests.packaging.docker_engine import PROJECT, project_name

SERVE_PORT = 8000  # `make serve`'s default: a port the tests must never assume free, nor talk to


@dataclass(frozen=True)
class ComposeTarget:
    port: int
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    project: str = field(default_factory=project_name)

    @classmethod
    def new(cls) -> ComposeTarget:
        return cls(free_port())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment `docker compose` runs with: the published port, the per-run key and the
        project."""
        return {"BRIDLE_PORT": str(self.port), "BRIDLE_API_KEY": self.api_key, PROJECT: self.project}

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


@dataclass
class Decoy:
    """An HTTP listener that answers every request with 200 and counts it: a stand-in for a developer's
    service on a port the tests must leave alone."""

    port: int
    server: ThreadingHTTPServer
    hits: list[str] = field(default_factory=list)


@contextmanager
def decoy_on(port: int) -> Iterator[Decoy | None]:
    """A `Decoy` on 127.0.0.1:`port` while the block runs; None when something else holds the port already
    (then that listener is the real thing the tests must not reach)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            hits.append(f"{self.command} {self.path}")
            body = b'{"status": "decoy"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError:
        yield None
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Decoy(port, server, hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
