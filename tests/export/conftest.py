"""Shared micro checkpoints and model directories: exporting is the slow part, so each modality is
exported once per test session (the image one through the CLI, the others through the Python API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from export_cases import LABELS, MICRO_PRESETS, micro_config


@dataclass(frozen=True)
class Exported:
    preset: str
    checkpoint: Path
    model_dir: Path


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    from typer.testing import CliRunner

    from bridle.export.cli import app
    from bridle.export.model_dir import export_model_dir
    from bridle.model.checkpoint import build_servable, save_servable

    root = tmp_path_factory.mktemp("export")
    out: dict[str, Exported] = {}
    for i, name in enumerate(MICRO_PRESETS):
        servable = build_servable(
            micro_config(name), labels=LABELS, seed=i, provenance={"recipe": "test", "step": 7}
        )
        checkpoint = save_servable(root / f"ckpt-{name}", servable)
        model_dir = root / f"model-{name}"
        if name == "micro-image":
            result = CliRunner().invoke(
                app, ["export", str(checkpoint), str(model_dir), "--name", "micro-img"]
            )
            assert result.exit_code == 0, result.output
        else:
            export_model_dir(checkpoint, model_dir)
        out[name] = Exported(name, checkpoint, model_dir)
    return out
