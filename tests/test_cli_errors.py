"""The five command lines report a failure alike: `error: <message>` on stderr, the exit code docs/cli.md
gives (1 the input failed, 2 a bad call or a start that cannot happen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bridle.batch import cli as batch_cli
from bridle.export import cli as export_cli
from bridle.importers import cli as importers_cli
from bridle.service import cli as service_cli
from bridle.training import cli as training_cli


@pytest.mark.parametrize(
    ("app", "args", "code"),
    [
        (training_cli.app, ["run", "{tmp}/missing.yaml"], 2),
        (export_cli.app, ["export", "{tmp}/missing", "{tmp}/out"], 1),
        (importers_cli.app, ["beats", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/out"], 1),
        (service_cli.cli, ["--model-dir", "{tmp}/missing"], 2),
        (batch_cli.app, ["{tmp}/missing", "--output", "{tmp}/out"], 2),
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
