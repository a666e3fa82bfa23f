"""The Docker engine the image tests share: found or started once per test process, stopped by the last
test process that used it if a test process started it (tests/packaging/docker_engine.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.packaging.docker_engine import (
    Engine,
    EngineUnavailable,
    ensure_base_image,
    exclusive,
    hand_in_wheels,
)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A Docker engine with the base image and the handed-in wheels ready for the compose builds."""
    try:
        engine = Engine.obtain()
    except EngineUnavailable as e:
        pytest.skip(f"no Docker engine can be started here: {e}")
    try:
        with exclusive("build"):  # what another test process may be making at the same time
            engine.sweep_projects()
            ensure_base_image(engine)
            hand_in_wheels(engine)
        yield engine
    finally:
        engine.stop()
