"""The importer families: each module of `bridle.importers` that reads a family of public checkpoints
declares its `bridle-import` sub-command with `@importer_family`, and the CLI (cli.py) builds itself from
what `discover` finds. A new family is its module (the decorated command beside the import) and its tests.

    @importer_family("beats", "--checkpoint BEATs.pt --out DIR [--force]", BeatsImportError)
    def beats_command(checkpoint: Annotated[Path, typer.Option(help=...)], ...) -> None:
        \"\"\"Import a BEATs checkpoint ... (the sub-command's help).\"\"\"

The command's parameters are the sub-command's options (typer), its docstring its help. Every family
takes `out: Out` and `force: Force`: the registry refuses a non-empty OUT (without --force) before the
command runs. An exception of the family's `errors` it raises is reported as `error: MESSAGE` with exit
status 1.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

EXIT_BAD_IMPORT = 1
NOT_FAMILIES = frozenset({"cli", "families"})  # the modules of bridle.importers that declare none

Command = TypeVar("Command", bound=Callable[..., None])

# the options every family takes: where the servable checkpoint goes, and whether it may replace one
Out = Annotated[Path, typer.Option(help="servable checkpoint directory to write")]
Force = Annotated[bool, typer.Option(help="replace an existing non-empty OUT")]


@dataclass(frozen=True)
class Family:
    """One `bridle-import NAME` sub-command."""

    name: str
    usage: str  # its options, for `bridle-import --help`
    command: Callable[..., None]


FAMILIES: dict[str, Family] = {}


def importer_family(name: str, usage: str, *errors: type[Exception]) -> Callable[[Command], Command]:
    """Register the decorated function as the sub-command `bridle-import NAME`; `errors` are the family's
    import errors (their message is the user's)."""

    def register(command: Command) -> Command:
        missing = {"out", "force"} - set(inspect.signature(command).parameters)
        if missing:
            raise ValueError(f"importer family {name!r} must take {sorted(missing)} (Out, Force)")

        @functools.wraps(command)
        def reporting(**options: Any) -> None:
            refuse_non_empty(options["out"], options["force"])
            try:
                command(**options)
            except errors as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(code=EXIT_BAD_IMPORT) from None

        held = FAMILIES.get(name)
        if held is not None and _origin(held.command) != _origin(command):
            raise ValueError(f"two importer families are named {name!r}")
        FAMILIES[name] = Family(name, usage, reporting)
        return command

    return register


def _origin(command: Callable[..., None]) -> tuple[str, str]:
    return command.__module__, command.__qualname__


def discover() -> list[Family]:
    """The families of every module of `bridle.importers` (each is imported, which registers them), in the
    order of their names."""
    package = importlib.import_module("bridle.importers")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in NOT_FAMILIES:
            importlib.import_module(f"{package.__name__}.{module.name}")
    return [FAMILIES[name] for name in sorted(FAMILIES)]


def refuse_non_empty(out: Path, force: bool) -> None:
    """Stop (exit status 1) when `out` exists and is not an empty folder, unless `force`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        typer.echo(f"error: {str(out)!r} exists and is not empty (pass --force to replace it)", err=True)
        raise typer.Exit(code=EXIT_BAD_IMPORT)
