"""`docker compose up` from the repository root really builds the CPU image and serves the bundled models.

Builds with the engine (cached layers make a re-run fast), starts the default profile, then checks /ready,
a /classify answer on spoken audio, the container's health status, that `docker compose stop` ends the
service with exit code 0 (SIGTERM drains), and that `docker compose down` leaves nothing running.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.packaging.docker_engine import Engine

pytestmark = pytest.mark.slow

URL = "http://127.0.0.1:8000"
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


def _ready() -> bool:
    try:
        return httpx.get(f"{URL}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _container(engine: Engine, service: str) -> str:
    ids = engine.compose("ps", "-a", "-q", service).stdout.split()
    assert len(ids) == 1, f"expected one {service} container, got {ids}"
    return ids[0]


def test_compose_up_serves_the_bundled_models_and_stops_cleanly(engine: Engine) -> None:
    engine.compose("down", "--remove-orphans")  # a clean slate if an earlier run was killed
    engine.build(["bridle:cpu"])
    try:
        engine.compose("up", "-d")
        ready_s = _wait_until(_ready, READY_TIMEOUT_S, "/ready answering 200")
        container = _container(engine, "bridle")
        health = lambda: engine.inspect(container)["State"]["Health"]["Status"] == "healthy"  # noqa: E731
        healthy_s = _wait_until(health, HEALTHY_AFTER_READY_S, "healthy after /ready")
        print(f"ready {ready_s:.1f} s after up; healthy {healthy_s:.1f} s after that")
        print(f"bridle:cpu image {engine.image_size_mb('bridle:cpu'):.0f} MB")

        models = httpx.get(f"{URL}/ready", timeout=5).json()["models"]
        assert {"audio-digits", "image-digits", "video-motion"} <= set(models)
        r = httpx.post(
            f"{URL}/classify",
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

        engine.compose("stop")
        state = engine.inspect(container)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    finally:
        down = engine.compose("down", check=False)
    assert down.returncode == 0, down.stderr
    assert engine.compose("ps", "-a", "-q").stdout.strip() == ""


def test_scale_profile_spreads_requests_over_the_replicas(engine: Engine) -> None:
    """`docker compose --profile scale up --scale replica=2`: nginx on :8000 answers from both replicas."""
    scale = ("--profile", "scale")
    engine.compose(*scale, "down", "--remove-orphans")
    engine.build(["bridle:cpu", "bridle:lb"], *scale)
    try:
        engine.compose(*scale, "up", "-d", "--scale", "replica=2")  # returns once the replicas are healthy
        _wait_until(_ready, READY_TIMEOUT_S, "/ready through the balancer")
        audio = _spoken("seven")
        replicas = set()
        for _ in range(8):
            r = httpx.post(f"{URL}/classify", files={"file": ("seven.wav", audio, "audio/wav")}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["labels"][0]["label"] == "seven"
            replicas.add(r.headers["X-Bridle-Replica"])
        assert len(replicas) == 2, replicas
    finally:
        down = engine.compose(*scale, "down", check=False)
    assert down.returncode == 0, down.stderr
