"""Write a benchmark split as class folders of image files, the layout the export's accuracy gate and
`bridle-batch` read:

    python -m bridle.data.split_folders cifar10 val data/cifar10-val [--root ../shared/data/cifar10]

Each image keeps its bytes when it has a file type of its own (a JPEG of a zip), else is written as PNG
(the python batches); names are the entries' own. An existing folder is refused unless --force.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from bridle.model.datasets import cifar10_entries

app = typer.Typer(add_completion=False)


@app.command()
def main(
    dataset: str = typer.Argument(..., help="cifar10"),
    split: str = typer.Argument(..., help="train | val | train-all | test"),
    out: Path = typer.Argument(..., help="the folder to write <class>/<file> into"),
    root: Path = typer.Option(Path("../shared/data/cifar10"), help="the data set's folder"),
    force: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    if dataset != "cifar10":
        typer.echo(f"error: only cifar10 has image splits to write, not {dataset!r}", err=True)
        raise typer.Exit(2)
    if out.exists() and not force:
        typer.echo(f"error: {out} exists (pass --force to replace it)", err=True)
        raise typer.Exit(1)
    entries = cifar10_entries(root, split)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for e in entries:
        folder = tmp / str(e.label)
        folder.mkdir(parents=True, exist_ok=True)
        data = e.data if e.data is not None else e.path.read_bytes()
        (folder / e.path.name).write_bytes(data)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    typer.echo(f"{len(entries)} images of CIFAR-10 {split} in {out}")


if __name__ == "__main__":
    app()
