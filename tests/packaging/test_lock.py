"""The locks in requirements/ (scripts/lock.sh, `make lock`) against pyproject.toml, offline: each pins every
dependency of its extras at a version pyproject.toml allows (a dependency added or a bound moved without
`make lock` fails here), the CPU ones pin the CPU torch and no CUDA library, the smaller locks agree with
the dev lock `make test` installs, and every install (make serve, make test, the Dockerfiles) takes its
versions from a lock. (An install from the serving lock into a new venv: test_serving_venv.py.)"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.packaging.docker_engine import REPO

LOCKS = REPO / "requirements"
# lock -> (extras, Python version, the flavour whose dev lock it must agree with)
EXPECTED = {
    "dev-cpu": ({"serve", "cpu", "train", "batch", "import", "dev"}, "3.11", None),
    "dev-gpu": ({"serve", "gpu", "train", "batch", "import", "dev"}, "3.11", None),
    "serve-cpu": ({"serve", "cpu"}, "3.11", "dev-cpu"),
    "serve-gpu": ({"serve", "gpu"}, "3.11", "dev-gpu"),
    "train-cpu": ({"train", "cpu"}, "3.11", "dev-cpu"),
    "train-gpu": ({"train", "gpu"}, "3.11", "dev-gpu"),  # torch comes from PyTorch's CUDA index
    "image-gpu": ({"serve", "gpu"}, "3.12", "dev-gpu"),  # the GPU image's Python; TensorRT outside
}
UNPINNED = {"train-gpu": {"torch"}}


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (LOCKS / f"{lock}.txt").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip()):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _direct(extras: set[str], python: str) -> list[Requirement]:
    """pyproject.toml's requirements for `extras` (the base ones too; `bridle[x]` expanded)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    found, todo, seen = [], list(extras), set()
    found += [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "bridle":
                todo += sorted(req.extras)
            elif req.marker is None or req.marker.evaluate(env):
                found.append(req)
    return found


def test_the_locks_are_the_ones_expected() -> None:
    assert {p.stem for p in LOCKS.glob("*.txt")} == set(EXPECTED)


@pytest.mark.parametrize("lock", sorted(EXPECTED))
def test_a_lock_pins_every_dependency_at_a_version_pyproject_allows(lock: str) -> None:
    extras, python, _ = EXPECTED[lock]
    pins = _pins(lock)
    missing, refused = [], []
    for req in _direct(extras, python):
        name = canonicalize_name(req.name)
        if name in UNPINNED.get(lock, set()):
            assert name not in pins, f"{lock} must leave {name} to its own index"
            continue
        if name not in pins:
            missing.append(str(req))
        elif not req.specifier.contains(pins[name], prereleases=True):
            refused.append(f"{name}=={pins[name]} (pyproject.toml: {req})")
    assert not missing and not refused, (
        f"requirements/{lock}.txt is out of date with pyproject.toml, run `make lock`: "
        f"missing {missing}, not allowed {refused}"
    )


@pytest.mark.parametrize("lock", sorted(EXPECTED))
def test_no_cuda_torch_and_the_cpu_locks_pin_the_cpu_build(lock: str) -> None:
    pins = _pins(lock)
    cuda = sorted(n for n in pins if n.startswith("nvidia-") or n == "triton")
    assert not cuda, f"{lock} pins CUDA libraries {cuda}: a CUDA torch was resolved"
    if "torch" in pins:
        assert pins["torch"] == "2.13.0+cpu", f"{lock} pins torch {pins['torch']}, not the CPU 2.13.0"
    if lock in ("dev-cpu", "dev-gpu", "train-cpu"):
        assert "torch" in pins


@pytest.mark.parametrize("lock", sorted(k for k, v in EXPECTED.items() if v[2]))
def test_a_smaller_lock_installs_what_make_test_tested(lock: str) -> None:
    dev = _pins(EXPECTED[lock][2])
    differ = {n: (v, dev.get(n)) for n, v in _pins(lock).items() if dev.get(n) != v}
    assert not differ, f"{lock} differs from {EXPECTED[lock][2]} (lock, dev): {differ}"


@pytest.mark.parametrize(
    ("path", "installs"),
    [
        ("Makefile", ["-c $(SERVE_LOCK)", "-c $(DEV_LOCK)"]),
        ("docker/Dockerfile.cpu", ["-c requirements/serve-cpu.txt"]),
        ("docker/Dockerfile.train", ['-c "$LOCK"']),
        ("docker/Dockerfile.gpu", ["-c requirements/image-gpu.txt"]),
        ("docker/wheels.sh", ["-c requirements/serve-cpu.txt", "-c requirements/train-cpu.txt"]),
    ],
)
def test_every_install_takes_its_versions_from_a_lock(path: str, installs: list[str]) -> None:
    text = (REPO / path).read_text()
    for install in installs:
        assert install in text, f"{path} does not install with {install}"
    for line in text.splitlines():
        if line.lstrip().startswith("#") or "--upgrade pip" in line:  # pip itself is not in a lock
            continue
        if re.search(r"pip(-install)? (install|download)", line):
            assert " -c " in line or "--no-deps" in line, f"{path}: an install without a lock: {line.strip()}"
