"""A Hugging Face folder through the real CLIs, in process: `bridle-import hf` then `bridle-export export`
(which verifies the export against PyTorch); shared by the parity and the service tests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bridle.export.cli import app as export_app
from bridle.importers.cli import app as import_app

TOLERANCE = 1e-4
EXPECTED_LABELS = ["dog", "cat", "crane (2)", "crane (3)", "bird"]
runner = CliRunner()


def import_and_export(folder: Path, root: Path) -> Path:
    """`bridle-import hf` + `bridle-export export` (which verifies); the model directory."""
    servable, model_dir = root / f"{folder.name}-servable", root / f"{folder.name}-model"
    run = runner.invoke(import_app, ["hf", "--checkpoint", str(folder), "--out", str(servable)])
    assert run.exit_code == 0, run.output
    run = runner.invoke(export_app, ["export", str(servable), str(model_dir)])
    assert run.exit_code == 0 and "PASSED" in run.output, run.output
    return model_dir
