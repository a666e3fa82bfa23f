"""The five command lines report a failure alike: `error: <message>` on stderr, the exit code docs/cli.md
gives (1 the input failed, 2 a bad call or a start that cannot happen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import batch.cli
import export.cli
import importers.cli
import service.cli
import training.cli


@pytest.mark.parametrize(
    ("app", "args", "code"),
    [
        (training.cli.app, ["run", "{tmp}/missing.yaml"], 2),
        (export.cli.app, ["export", "{tmp}/missing", "{tmp}/out"], 1),
        (importers.cli.app, ["beats", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/out"], 1),
        (service.cli.cli, ["--model-dir", "{tmp}/missing"], 2),
        (batch.cli.app, ["{tmp}/missing", "--output", "{tmp}/out"], 2),
    ],
    ids=["bridle-train", "bridle-export", "bridle-import", "bridle-serve", "bridle-batch"],
)
def test_a_failure_is_one_error_line_and_the_documented_code(
    app: typer.Typer, args: list[str], code: int, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "missing" in last, result.stderr
