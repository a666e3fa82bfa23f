"""The helpers that start servers for the tests never reach a port that a process outside the test holds.

A decoy listens on port 8000 (where `make serve` answers) while the compose helpers pick their port and
Compose resolves it, and while `bench.serve.running_service` (the benchmarks' and hardening tests' server)
starts and answers: nothing may land on the decoy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from bench.serve import BUNDLED, free_port, running_service
from tests.packaging.docker_engine import REPO, compose_binary
from tests.packaging.ports import SERVE_PORT, ComposeTarget, Decoy, decoy_on


@pytest.fixture
def decoy() -> Iterator[Decoy | None]:
    """The decoy on port 8000, or None when another process (a developer's `make serve`) holds the port:
    the case under test, though then nothing counts what reaches it."""
    with decoy_on(SERVE_PORT) as held:
        yield held
    assert held is None or held.hits == [], f"a helper talked to port {SERVE_PORT}: {held.hits}"


def test_the_decoy_counts_what_reaches_it(decoy: Decoy | None) -> None:
    """The guard itself can fail: a request to port 8000 is seen."""
    if decoy is None:
        pytest.skip(f"port {SERVE_PORT} is held by another process: no decoy to check")
    assert httpx.get(f"http://127.0.0.1:{SERVE_PORT}/ready", timeout=5).json() == {"status": "decoy"}
    assert decoy.hits == ["GET /ready"]
    decoy.hits.clear()


def test_free_ports_are_free_on_every_interface(decoy: Decoy | None) -> None:
    ports = {free_port() for _ in range(50)}
    assert SERVE_PORT not in ports
    for port in list(ports)[:10]:
        with socket.socket() as s:
            s.bind(("", port))  # free on all interfaces, as Docker's port publishing needs


@pytest.mark.parametrize(("profile", "service"), [("", "bridle"), ("scale", "lb")])
def test_compose_publishes_the_tests_own_port(decoy: Decoy | None, profile: str, service: str) -> None:
    """Compose, run with a `ComposeTarget`'s environment, publishes that target's port, not 8000."""
    target = ComposeTarget.new()
    args = [str(compose_binary()), *(["--profile", profile] if profile else []), "config", "--format", "json"]
    out = subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, env={**_clean_env(), **target.env}, check=False
    )
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    # its own project: its containers, networks and volumes are named after it, not compose.yaml's `bridle`
    assert resolved["name"] == target.project
    assert all(n["name"].startswith(f"{target.project}_") for n in resolved["networks"].values())
    ports = resolved["services"][service]["ports"]
    assert [(p["published"], p["target"]) for p in ports] == [(str(target.port), 8000)]
    assert target.port != SERVE_PORT


def test_running_service_answers_on_its_own_port(decoy: Decoy | None) -> None:
    """The benchmarks' server helper starts, becomes ready and answers on a port of its own."""
    with running_service(BUNDLED[:1]) as service:
        assert not service.url.endswith(f":{SERVE_PORT}")
        models = httpx.get(f"{service.url}/models", timeout=10).json()["models"]
        assert [m["name"] for m in models] == [BUNDLED[0].name]


def _clean_env() -> dict[str, str]:
    """This process's environment without the variables compose.yaml reads (a developer may have set them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIDLE_")}
