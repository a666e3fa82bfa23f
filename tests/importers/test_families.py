"""Importer families declare their `bridle-import` sub-command where they are written (`@importer_family`,
bridle/importers/families.py), and the command line builds itself from them: a new family needs no edit
of the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from bridle.importers import families
from bridle.importers.cli import app, build_app
from bridle.importers.families import FAMILIES, Force, Out, discover, importer_family


class ToyImportError(ValueError):
    pass


@pytest.fixture
def toy_family() -> Iterator[families.Family]:
    """A family declared here, as a new module of bridle.importers would declare one."""

    @importer_family("toy", "--checkpoint FILE --out DIR", ToyImportError)
    def toy_command(
        checkpoint: Annotated[Path, typer.Option(help="the toy checkpoint")],
        out: Out,
        force: Force = False,
    ) -> None:
        """Import a toy checkpoint."""
        if not checkpoint.is_file():
            raise ToyImportError(f"no toy checkpoint at {checkpoint}")
        out.write_text(checkpoint.read_text())
        typer.echo(f"wrote {out}")

    yield FAMILIES["toy"]
    del FAMILIES["toy"]


def test_the_modules_of_the_package_declare_the_families() -> None:
    assert [f.name for f in discover()] == ["beats", "hf"]
    assert [c.name for c in app.registered_commands] == ["beats", "hf"]


def test_a_declared_family_is_a_sub_command_with_its_usage(
    toy_family: families.Family, tmp_path: Path
) -> None:
    toy_app = build_app([*discover()])
    runner = CliRunner()
    shown = runner.invoke(toy_app, ["--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "bridle-import toy --checkpoint FILE --out DIR" in shown.output
    assert "Import a toy checkpoint." in shown.output
    (tmp_path / "toy.ckpt").write_text("weights")
    done = runner.invoke(
        toy_app, ["toy", "--checkpoint", str(tmp_path / "toy.ckpt"), "--out", str(tmp_path / "o")]
    )
    assert done.exit_code == 0 and (tmp_path / "o").read_text() == "weights", done.output


def test_a_family_error_is_one_error_line_and_exit_status_1(
    toy_family: families.Family, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        build_app([toy_family]), ["toy", "--checkpoint", str(tmp_path / "none"), "--out", "x"]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"error: no toy checkpoint at {tmp_path / 'none'}"


def test_an_out_that_is_not_empty_is_refused_before_the_command_runs(
    toy_family: families.Family, tmp_path: Path
) -> None:
    (tmp_path / "toy.ckpt").write_text("weights")
    (tmp_path / "o").write_text("kept")
    args = ["toy", "--checkpoint", str(tmp_path / "toy.ckpt"), "--out", str(tmp_path / "o")]
    refused = CliRunner().invoke(build_app([toy_family]), args)
    assert refused.exit_code == 1 and "exists and is not empty (pass --force" in refused.stderr
    assert (tmp_path / "o").read_text() == "kept"
    forced = CliRunner().invoke(build_app([toy_family]), [*args, "--force"])
    assert forced.exit_code == 0 and (tmp_path / "o").read_text() == "weights", forced.output


def test_two_families_of_one_name_are_refused(toy_family: families.Family) -> None:
    with pytest.raises(ValueError, match="two importer families are named 'toy'"):

        @importer_family("toy", "", ToyImportError)
        def another_toy(out: Out, force: Force = False) -> None:
            """Another."""


def test_a_family_without_out_and_force_is_refused() -> None:
    with pytest.raises(ValueError, match=r"importer family 'bare' must take \['force', 'out'\]"):

        @importer_family("bare", "", ToyImportError)
        def bare() -> None:
            """No options."""
