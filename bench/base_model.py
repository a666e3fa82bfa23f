"""A real-size model for the serving benchmarks, built on demand: `python -m bench.base_model [--out DIR]`.

The `base-audio` preset (the paper's ViT-B: a 12 x 768 encoder and a 12 x 768 tokenizer, RQ 4 x 256 x
256, 10.24 s windows of 512 patches), seeded random weights and a 10-label head, exported with the
service's defaults into `runs/bench-models/base-audio` (gitignored; ~0.7 GB of graphs, never committed).
A directory already there whose manifest verifies is reused; the export takes a few minutes on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from bridle.model.manifest import ManifestError, read_manifest

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "runs" / "bench-models"
PRESET = "base-audio"
LABELS = [f"class {i}" for i in range(10)]


def base_audio_dir(root: Path = ROOT, seed: int = 0) -> Path:
    """The real-size audio model directory under `root`, exported now unless a valid one is there."""
    directory = root / f"{PRESET}-seed{seed}"
    try:
        read_manifest(directory, check_hashes=True)
        return directory
    except ManifestError:
        pass
    from bridle.export.model_dir import export_model_dir
    from bridle.model.checkpoint import build_servable
    from bridle.model.config import preset

    started = time.perf_counter()
    servable = build_servable(preset(PRESET), labels=LABELS, seed=seed)
    export_model_dir(servable, directory, name=PRESET, run_verify=False, force=True)
    print(f"exported {PRESET} (seed {seed}) to {directory} in {time.perf_counter() - started:.0f} s")
    return directory


def main(out: Annotated[Path, typer.Option(help="folder of the benchmark models")] = ROOT) -> None:
    """Print the real-size audio model directory, exported first when it is not there."""
    print(base_audio_dir(out))


if __name__ == "__main__":
    typer.run(main)
