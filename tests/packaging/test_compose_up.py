"""`docker compose up` from the repository root really builds the CPU image and serves the bundled models.

Builds with the engine (cached layers make a re-run fast), starts the default profile, then checks /ready,
a /classify answer on spoken audio, the container's health status, that `docker compose stop` ends the
service with exit code 0 (SIGTERM drains), and that `docker compose down` leaves nothing running.

Each test publishes its service on a free port with a per-run API key (`ComposeTarget`), and a decoy holds
port 8000 meanwhile, as a developer's `make serve` would: every answer must come from the test's own
containers, and the decoy must see no request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.packaging.docker_engine import REPO, Engine
from tests.packaging.ports import SERVE_PORT, ComposeTarget, Decoy, decoy_on

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Healthcheck:
    """The CPU image's HEALTHCHECK (docker/Dockerfile.cpu), in seconds: the test waits as long as the
    image itself allows, so a loaded machine's slow start is not a failure, and a start the image would
    call unhealthy is."""

    interval: float
    timeout: float
    start_period: float
    retries: int

    @classmethod
    def of_image(cls, dockerfile: str = "docker/Dockerfile.cpu") -> Healthcheck:
        line = re.search(r"^HEALTHCHECK (.*)$", (REPO / dockerfile).read_text(), re.M)
        assert line, f"{dockerfile} has no HEALTHCHECK"
        found = dict(re.findall(r"--([\w-]+)=(\d+)s?", line.group(1)))
        return cls(
            float(found["interval"]),
            float(found["timeout"]),
            float(found["start-period"]),
            int(found["retries"]),
        )

    @property
    def ready_within_s(self) -> float:
        """The start the image allows: failed probes in its start period do not count."""
        return self.start_period

    @property
    def verdict_within_s(self) -> float:
        """From the service's start: Docker has said healthy or unhealthy by then (the start period, then
        `retries` failed probes of up to `interval` + `timeout` each)."""
        return self.start_period + self.retries * (self.interval + self.timeout)


HEALTHCHECK = Healthcheck.of_image()


def _spoken(word: str) -> bytes:
    """A real wav of `word` from Debian's espeak-ng (a voice the demo data's training split also uses)."""
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng missing: bash scripts/system-deps.sh"
    return subprocess.run([exe, "-v", "en", "--stdout", word], capture_output=True, check=True).stdout


def _wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], None] = lambda: None
) -> float:
    """Seconds until `predicate()` holds; fails after `timeout_s`, or at once when `alive()` raises (the
    container died or restarted: no wait for a limit hides that)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        alive()
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s")


def _running(engine: Engine, container: str) -> Callable[[], None]:
    """A check that the container still runs its first process: an exit or a restart (compose.yaml's
    `restart: unless-stopped` would hide a crash loop) fails with the container's log."""

    def check() -> None:
        state = engine.inspect(container)
        if state["State"]["Status"] != "running" or state["RestartCount"]:
            log = engine.run(["docker", "logs", "--tail", "40", container], check=False)
            raise AssertionError(
                f"the container stopped or restarted ({state['State']['Status']}, exit"
                f" {state['State']['ExitCode']}, {state['RestartCount']} restarts):\n{log.stdout}{log.stderr}"
            )

    return check


def _health(engine: Engine, container: str) -> str:
    return engine.inspect(container)["State"]["Health"]["Status"]


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
        started = time.monotonic()
        assert _project_networks(engine, target), "the project has no network of its own"
        container = _container(engine, target, "bridle")
        alive = _running(engine, container)
        ready_s = _wait_until(
            lambda: _ready(target), HEALTHCHECK.ready_within_s, "/ready answering 200", alive
        )
        _check_own_service(target)
        # Docker's own verdict: healthy, or unhealthy (its probes failed `retries` times after the start
        # period), by the time its rules reach one
        verdict_s = HEALTHCHECK.verdict_within_s - (time.monotonic() - started)
        _wait_until(
            lambda: _health(engine, container) != "starting", verdict_s, "Docker's health verdict", alive
        )
        assert _health(engine, container) == "healthy", engine.inspect(container)["State"]["Health"]
        print(f"ready {ready_s:.1f} s after up; healthy {time.monotonic() - started:.1f} s after up")
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
        _wait_until(lambda: _ready(target), HEALTHCHECK.ready_within_s, "/ready through the balancer")
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
