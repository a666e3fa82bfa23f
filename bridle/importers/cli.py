"""`bridle-import`: turn a public checkpoint into a servable checkpoint that `bridle-export` exports.

One sub-command per importer family, built from the families the modules of `bridle.importers` declare
(`@importer_family`, bridle/importers/families.py).
"""

from __future__ import annotations

import typer

from bridle.importers.families import Family, discover

HEADER = "`bridle-import`: turn a public checkpoint into a servable checkpoint that `bridle-export` exports."


def build_app(families: list[Family]) -> typer.Typer:
    """The command line: a sub-command per family, and their usage in the help."""
    usage = "\n".join(f"bridle-import {f.name} {f.usage}" for f in families)
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=f"{HEADER}\n\n{usage}\n")

    @app.callback()
    def main_callback() -> None:
        """Import public checkpoints (one sub-command per model family)."""

    for family in families:
        app.command(family.name)(family.command)
    return app


app = build_app(discover())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
