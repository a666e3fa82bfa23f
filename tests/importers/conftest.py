"""Upstream-layout BEATs files, imported and exported once per session through the real CLIs."""

from __future__ import annotations

import pytest

from tests.importers.exported import Exported


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tmp_path_factory.mktemp("beats"))
