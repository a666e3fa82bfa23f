"""Micro recipes over synthetic media, for the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from training_media import write_media

from bridle.training.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "bridle" / "training" / "recipes" / "micro.yaml"


def subprocess_env() -> dict[str, str]:
    """The environment of a training process the tests start: the repository importable, one thread."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def run_torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node <processes> <args>` from the repository, one thread each."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
    ]
    env = subprocess_env()
    return subprocess.run([*torchrun, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def micro_overrides(
    modality: str, root: Path, per_class: int = 4, test: bool = True, test_per_class: int = 2
) -> list[str]:
    """Overrides that point the micro recipe at fresh synthetic `modality` data under `root`."""
    train = write_media(modality, root / "train", per_class)
    items = [
        f"model.preset=micro-{modality}",
        f"data.modality={modality}",
        f"data.train={train}",
        f"out_dir={root / 'run'}",
    ]
    items.append(
        f"data.test={write_media(modality, root / 'test', test_per_class, seed=1)}"
        if test
        else "data.test=null"
    )
    return items


def micro_recipe(modality: str, root: Path, extra: list[str] = (), **kw) -> Recipe:  # type: ignore[assignment]
    return load_recipe(MICRO, [*micro_overrides(modality, root, **kw), *extra])


def stage_losses(recipe: Recipe, index: int) -> list[float]:
    from bridle.training.state import load_stage

    state = load_stage(Path(recipe.out_dir) / recipe.stage_name(index))
    assert state is not None
    return list(state.extra["history"]["loss"])
