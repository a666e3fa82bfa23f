"""`bridle-train`: run a whole recipe, or one stage of it.

    bridle-train run RECIPE.yaml [key=value ...] [--resume]
    bridle-train stage RECIPE.yaml --stage N [key=value ...] [--resume]
    bridle-train calibrate SERVABLE_DIR --data HELD_OUT [--split NAME] [--out DIR]
    bridle-train shards SOURCE OUT --modality audio [--max-count 1000] [--max-mb 256] [--seed 0]
    bridle-train tokenizer SERVABLE --data FOLDER --levels L --codebook-size K [--steps N] [--seed S]
        --out DIR

Multi-process: `torchrun --nproc_per_node 2 -m bridle.training.cli run RECIPE.yaml`; across machines see
deploy/slurm-train.sh and deploy/kubernetes-train.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bridle.model.logs import log_to_stderr
from bridle.model.modalities import modality_choices, modality_names
from bridle.training.recipe import Recipe, RecipeError, load_recipe

app = typer.Typer(add_completion=False, help="Train BRIDLE models from a recipe.")
RESUME_HELP = "continue from the last checkpoint in out_dir (finished stages are skipped)"


def _load(recipe_path: Path, overrides: list[str] | None) -> Recipe:
    try:
        return load_recipe(recipe_path, overrides or [])
    except RecipeError as e:
        typer.echo(f"error: bad recipe {recipe_path}: {e}", err=True)
        raise typer.Exit(2) from e


def _execute(recipe: Recipe, stages: list[int], resume: bool) -> None:
    from bridle.training.distributed import init_from_env, shutdown
    from bridle.training.stages import StageError, prepare_run, run_stage

    info = init_from_env()
    try:
        ctx = prepare_run(recipe, info, reuse_config=resume or stages != list(range(len(recipe.stages))))
        for index in stages:
            result = run_stage(ctx, index, resume)
            if info.is_main:
                typer.echo(json.dumps(result.summary))
    except (StageError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    finally:
        shutdown(info)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    overrides: list[str] | None = typer.Argument(None, help="dotted key=value overrides"),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
) -> None:
    """Run every stage of RECIPE in order."""
    r = _load(recipe, overrides)
    _execute(r, list(range(len(r.stages))), resume)


@app.command()
def stage(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    overrides: list[str] | None = typer.Argument(None, help="dotted key=value overrides"),
    index: int = typer.Option(..., "--stage", help="stage index (0-based) in the recipe"),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
) -> None:
    """Run stage N of RECIPE alone, from the earlier stages' checkpoints in out_dir."""
    r = _load(recipe, overrides)
    if not 0 <= index < len(r.stages):
        typer.echo(f"error: --stage must be in [0, {len(r.stages) - 1}], got {index}", err=True)
        raise typer.Exit(2)
    _execute(r, [index], resume)


@app.command()
def calibrate(
    servable: Path = typer.Argument(..., help="servable checkpoint (e.g. runs/<recipe>/servable)"),
    data: Path = typer.Option(..., help="held-out labelled data, not the test split (folder or manifest)"),
    split: str | None = typer.Option(None, help="a manifest's `split` rows to use"),
    out: Path | None = typer.Option(
        None, help="where to write the calibrated checkpoint (default: in place)"
    ),
    batch_size: int = typer.Option(64, min=1),
    augment: Path | None = typer.Option(
        None, help="a recipe: fit on DATA passed through its training augmentation (data.augment)"
    ),
    repeats: int = typer.Option(1, min=1, help="with --augment: augmented draws per example"),
    seed: int = typer.Option(0, help="with --augment: draw r is seeded SEED + r"),
) -> None:
    """Fit a softmax temperature on DATA and fold it into SERVABLE's classifier head (calibration.py)."""
    from bridle.model.checkpoint import CheckpointError, load_servable, save_servable
    from bridle.training.augment import build_augment
    from bridle.training.calibration import CalibrationError, calibrate_servable, held_out_logits

    described = f"{data}" + (f" [{split}]" if split else "")
    try:
        model = load_servable(servable)
        augmenter = None
        if augment is not None:
            augmenter = build_augment(model.config.modality, load_recipe(augment).data.augment, model.config)
            if augmenter is None:
                raise CalibrationError(f"{augment} sets no data.augment to calibrate under")
            described += f" x {repeats} under {augment}'s augmentation (seeds {seed}..{seed + repeats - 1})"
        elif repeats != 1:
            raise CalibrationError("--repeats needs --augment")
        logits, labels = held_out_logits(model, data, split, augmenter, repeats, seed, batch_size)
        report = calibrate_servable(model, logits, labels, data=described)
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # the Calibration/Recipe/Augment errors too
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    save_servable(out or servable, model)
    typer.echo(json.dumps(report.to_dict()))


@app.command()
def shards(
    source: Path = typer.Argument(
        ..., help="a class folder, an unlabelled folder, or a .csv/.jsonl manifest"
    ),
    out: Path = typer.Argument(..., help="a new folder for the shards and shards.json"),
    modality: str = typer.Option(..., help="audio, image or video"),
    max_count: int = typer.Option(1000, min=1, help="examples per shard at most"),
    max_mb: float = typer.Option(256.0, min=0.001, help="megabytes per shard at most"),
    seed: int = typer.Option(0, help="seed of the order the files are written in"),
    label_column: str = typer.Option("label", help="a manifest's label column"),
    split: str | None = typer.Option(None, help="a manifest's `split` rows to use"),
) -> None:
    """Write SOURCE's media files into WebDataset tar shards for streaming training
    (bridle/training/shards.py).

    A recipe then reads them with `data.train: OUT`."""
    from bridle.training.shards import ShardError, write_shards

    if modality not in modality_names():
        typer.echo(f"error: --modality must be {modality_choices()}, got {modality!r}", err=True)
        raise typer.Exit(2)
    try:
        index = write_shards(source, out, modality, max_count, max_mb, seed, label_column, split)
    except (ShardError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    summary = {"out": str(out), "shards": len(index.shards), "examples": index.count, "labels": index.labels}
    typer.echo(json.dumps(summary))


@app.command("tokenizer")
def tokenizer_command(
    servable: Path = typer.Argument(..., help="servable checkpoint whose encoder is the teacher"),
    data: Path = typer.Option(..., help="folder of media files of the servable's modality (recursive)"),
    levels: int = typer.Option(..., help="RQ levels L"),
    codebook_size: int = typer.Option(..., help="codes per level K"),
    out: Path = typer.Option(..., help="servable checkpoint to write (encoder and head copied, T trained)"),
    steps: int = typer.Option(500, help="training steps"),
    seed: int = typer.Option(0, help="seed of the split, the batches and T/TE's initial weights"),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-3),
    warmup_steps: int = typer.Option(20),
    held_out: float = typer.Option(0.1, help="share of the files held out for the usage report"),
    code_dim: int | None = typer.Option(None, help="code dim (default: the servable's)"),
    dead_code_steps: int | None = typer.Option(None, help="restart a code unused this many steps"),
    tokenizer_dim: int | None = typer.Option(None, help="T's ViT width (default: the servable's)"),
    tokenizer_depth: int | None = typer.Option(None, help="T's ViT blocks (default: the servable's)"),
    tokenizer_heads: int | None = typer.Option(None, help="T's ViT heads (default: the servable's)"),
    estimator_depth: int | None = typer.Option(None, help="TE's blocks (default: the servable's)"),
    device: str = typer.Option("cpu", help="torch device, e.g. cuda"),
    force: bool = typer.Option(False, help="replace an existing non-empty OUT"),
) -> None:
    """Distil a BRIDLE tokenizer (T + TE) from SERVABLE's encoder on DATA into a new servable OUT
    (bridle/training/distill_tokenizer.py); print and write its per-level held-out code usage."""
    from bridle.model.checkpoint import CheckpointError
    from bridle.training.distill_tokenizer import (
        DistillError,
        DistillSettings,
        distill_tokenizer,
        usage_table,
        write_result,
    )

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        typer.echo(f"error: {str(out)!r} exists and is not empty (pass --force to replace it)", err=True)
        raise typer.Exit(1)
    settings = DistillSettings(
        levels=levels,
        codebook_size=codebook_size,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        held_out=held_out,
        code_dim=code_dim,
        dead_code_steps=dead_code_steps,
        tokenizer_dim=tokenizer_dim,
        tokenizer_depth=tokenizer_depth,
        tokenizer_heads=tokenizer_heads,
        estimator_depth=estimator_depth,
        device=device,
    )
    try:
        trained, report = distill_tokenizer(servable, data, settings)
    except (DistillError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    path = write_result(out, trained, report)
    typer.echo(usage_table(report))
    typer.echo(f"wrote {out} (tokenizer {levels} x {codebook_size}, trained); report {path}")


def main() -> None:
    log_to_stderr(timestamps=False)
    app()


if __name__ == "__main__":
    main()
