"""`docker compose up` from the repository root really builds the CPU image and serves the bundled models.

Builds with the engine (cached layers make a re-run fast), starts the default profile, then checks /ready,
a /classify answer on spoken audio, the container's health status, that `docker compose stop` ends the
service with exit code 0 (SIGTERM drains), and that `docker compose down` leaves nothing running.

Each test publishes its service on a free port with a per-run API key (`ComposeTarget`), and a decoy holds
port 8000 meanwhile, as a developer's `make serve` would: every answer must come from the test's own
containers, and the decoy must see no request.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.packaging.docker_engine import Engine
from tests.packaging.ports import SERVE_PORT, ComposeTarget, Decoy, decoy_on

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 90.0
HEALTHY_AFTER_READY_S = 10.0  # the healthcheck probes every 2 s (a loaded machine runs late)


def _spoken(word: str) -> bytes:
    """A real wav of `word` from Debian's espeak-ng (a voice the demo data's training split also uses)."""
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng missing: bash scripts/system-deps.sh"
    return subprocess.run([exe, "-v", "en", "--stdout", word], capture_output=True, check=True).stdout


def _wait_until(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s")


@pytest.fixture(scope="module", autouse=True)
def serve_port_held() -> Iterator[Decoy | None]:
    """Port 8000 held by a decoy while the compose tests run (unless something already holds it: then
    that listener plays the part); the decoy must have seen no request at the end."""
    with decoy_on(SERVE_PORT) as decoy:
        yield decoy
    assert decoy is None or decoy.hits == [], f"a compose test talked to port {SERVE_PORT}: {decoy.hits}"


@pytest.fixture
def target() -> ComposeTarget:
    return ComposeTarget.new()


def _ready(target: ComposeTarget) -> bool:
    try:
        return httpx.get(f"{target.url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _check_own_service(target: ComposeTarget) -> None:
    """The listener on the target's port is the test's own container: it refuses a request without the
    per-run key and serves one with it."""
    assert httpx.get(f"{target.url}/models", timeout=5).status_code == 401
    assert httpx.get(f"{target.url}/models", headers=target.headers, timeout=5).status_code == 200


def _container(engine: Engine, target: ComposeTarget, service: str) -> str:
    ids = engine.compose("ps", "-a", "-q", service, env=target.env).stdout.split()
    assert len(ids) == 1, f"expected one {service} container, got {ids}"
    return ids[0]


def _project_networks(engine: Engine, target: ComposeTarget) -> list[str]:
    """The networks of the target's own project (its default network is `<project>_default`)."""
    label = f"label=com.docker.compose.project={target.project}"
    return engine.run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split()


def test_compose_up_serves_the_bundled_models_and_stops_cleanly(
    engine: Engine, target: ComposeTarget
) -> None:
    env = target.env
    engine.build(["bridle:cpu"], env=env)
    try:
        engine.compose("up", "-d", env=env)
        assert _project_networks(engine, target), "the project has no network of its own"
        ready_s = _wait_until(lambda: _ready(target), READY_TIMEOUT_S, "/ready answering 200")
        _check_own_service(target)
        container = _container(engine, target, "bridle")
        health = lambda: engine.inspect(container)["State"]["Health"]["Status"] == "healthy"  # noqa: E731
        healthy_s = _wait_until(health, HEALTHY_AFTER_READY_S, "healthy after /ready")
        print(f"ready {ready_s:.1f} s after up; healthy {healthy_s:.1f} s after that")
        print(f"bridle:cpu image {engine.image_size_mb('bridle:cpu'):.0f} MB")

        models = httpx.get(f"{target.url}/ready", timeout=5).json()["models"]
        assert {"audio-digits", "image-digits", "video-motion"} <= set(models)
        r = httpx.post(
            f"{target.url}/classify",
            headers=target.headers,
            params={"top_k": 1},
            files={"file": ("seven.wav", _spoken("seven"), "audio/wav")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["model"] == "audio-digits"
        assert result["labels"][0]["label"] == "seven", result["labels"]

        state = engine.inspect(container)
        assert state["Config"]["User"] == "10001", "the service must not run as root"

        engine.compose("stop", env=env)
        state = engine.inspect(container)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    finally:
        down = engine.down(env=env)
    assert down.returncode == 0, down.stderr
    assert engine.compose("ps", "-a", "-q", env=env).stdout.strip() == ""
    assert _project_networks(engine, target) == []


def test_scale_profile_spreads_requests_over_the_replicas(engine: Engine, target: ComposeTarget) -> None:
    """`docker compose --profile scale up --scale replica=2`: nginx on the published port answers from both
    replicas."""
    scale, env = ("--profile", "scale"), target.env
    engine.build(["bridle:cpu", "bridle:lb"], *scale, env=env)
    try:
        # returns once the replicas are healthy
        engine.compose(*scale, "up", "-d", "--scale", "replica=2", env=env)
        _wait_until(lambda: _ready(target), READY_TIMEOUT_S, "/ready through the balancer")
        _check_own_service(target)
        audio = _spoken("seven")
        replicas = set()
        for _ in range(8):
            r = httpx.post(
                f"{target.url}/classify",
                headers=target.headers,
                files={"file": ("seven.wav", audio, "audio/wav")},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["labels"][0]["label"] == "seven"
            replicas.add(r.headers["X-Bridle-Replica"])
        assert len(replicas) == 2, replicas
    finally:
        down = engine.down(*scale, env=env)
    assert down.returncode == 0, down.stderr
    assert _project_networks(engine, target) == []
