"""Small-scale replication of the paper's three claims on the demo data.

    python -m training.replicate --data data --out results/replication [--budget full|micro] [--seeds 3]
                                 [--modality audio --modality image]

Per modality (audio-digits, image-digits) and seed, with one encoder size and equal stage budgets:
    iter1-random-proj     iteration 1: E pretrained on a frozen random-projection RQ tokenizer
    iter2-rq-kmeans       BRIDLE iteration 2: T (RQ, L levels, k-means init) distilled from iteration-1 E,
                          then E pretrained on T's codes                                  (claims a, b, c)
    iter2-vq-1x1024       the same interleaving with a BEATs-style single codebook (1 x 1024)  (claim a)
    iter2-rq-random-init  iteration 2 with uniformly random initial codebooks              (claim b)
The iteration-2 variants of one seed start from the same iteration-1 encoder (its stage folder is copied).
Each encoder is measured by a linear probe (training/probe.py) and each tokenizer by its per-level code
usage on held-out data. Output in --out: results.json, results.md (printed at the end), accuracy.png,
usage.png. The training stages are the ordinary ones of training/stages.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer
from tqdm import tqdm

from bridle_model.config import ModelConfig
from bridle_model.preprocessing import build_preprocessor
from training.distributed import DistInfo
from training.probe import (
    ProbeConfig,
    ProbeSplits,
    held_out_usage,
    linear_probe,
    pooled_features,
    probe_splits,
)
from training.recipe import Recipe, recipe_from_dict
from training.stages import MODEL_CONFIG_FILE, RunContext, prepare_run, run_stage

log = logging.getLogger(__name__)

DATASETS = {"audio": "audio-digits", "image": "image-digits"}
ITERATION1 = "iter1-random-proj"


@dataclass(frozen=True)
class Variant:
    name: str
    iteration: int  # 1: random-projection tokenizer only; 2: + trained tokenizer + second pretraining
    quantizer: dict[str, Any] = field(default_factory=dict)  # overrides of the budget's RQ (iteration 2)


VARIANTS: tuple[Variant, ...] = (
    Variant(ITERATION1, 1),
    Variant("iter2-rq-kmeans", 2, {"init": "kmeans"}),
    Variant("iter2-vq-1x1024", 2, {"levels": 1, "codebook_size": 1024, "init": "kmeans"}),
    Variant("iter2-rq-random-init", 2, {"init": "random"}),
)


@dataclass(frozen=True)
class Budget:
    """Model size and steps shared by every variant (equal budgets)."""

    size: str  # preset prefix: "micro" or "tiny"
    pretrain_steps: int  # each pretrain stage
    tokenizer_steps: int
    batch_size: int
    lr: float
    probe: ProbeConfig


BUDGETS: dict[str, Budget] = {
    "micro": Budget("micro", 3, 3, 8, 2e-3, ProbeConfig(steps=20, batch_size=16, max_examples=40)),
    "full": Budget("tiny", 120, 60, 32, 1e-3, ProbeConfig(steps=300, batch_size=64)),
}


@dataclass(frozen=True)
class RunResult:
    modality: str
    seed: int
    variant: str
    accuracy: float
    usage_rate: list[float]  # per level, held-out
    perplexity: list[float]


# ---- training one variant ---------------------------------------------------------------------------------


def stage_recipe(budget: Budget, modality: str, train: Path, seed: int, out_dir: Path, stages: int) -> Recipe:
    """pretrain1 [-> tokenizer1 -> pretrain2]: the first `stages` stages of two interleaved iterations."""
    common = {"lr": budget.lr, "warmup_steps": max(1, budget.pretrain_steps // 10), "log_every": 10}
    plan = [
        {"kind": "pretrain", "name": "pretrain1", "steps": budget.pretrain_steps, **common},
        {"kind": "tokenizer", "name": "tokenizer1", "steps": budget.tokenizer_steps, **common},
        {"kind": "pretrain", "name": "pretrain2", "steps": budget.pretrain_steps, **common},
    ]
    return recipe_from_dict(
        {
            "name": f"replicate-{modality}-seed{seed}",
            "seed": seed,
            "out_dir": str(out_dir),
            "checkpoint_every": 10**9,  # only the final checkpoint of each stage
            "model": {"preset": f"{budget.size}-{modality}"},
            "data": {"train": str(train), "modality": modality, "batch_size": budget.batch_size},
            "stages": plan[:stages],
        }
    )


def train_variant(
    variant: Variant, budget: Budget, modality: str, train: Path, seed: int, seed_dir: Path
) -> tuple[RunContext, torch.nn.Module, torch.nn.Module]:
    """Train one variant's stages -> its run context, final encoder E and the tokenizer E learned from."""
    info = DistInfo()
    if variant.iteration == 1:
        out = seed_dir / ITERATION1
        ctx = prepare_run(stage_recipe(budget, modality, train, seed, out, 1), info, reuse_config=False)
        objective = run_stage(ctx, 0, resume=True).objective
    else:
        first, out = seed_dir / ITERATION1, seed_dir / variant.name
        if not (out / "pretrain1").is_dir():  # share the iteration-1 encoder of this seed
            shutil.copytree(first / "pretrain1", out / "pretrain1")
        base = ModelConfig.from_dict(json.loads((first / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
        config = base.to_dict()  # iteration 1's config (with its fbank statistics), this variant's RQ
        config["quantizer"] = {**config["quantizer"], **variant.quantizer}
        (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        ctx = prepare_run(stage_recipe(budget, modality, train, seed, out, 3), info, reuse_config=True)
        for index in range(3):
            objective = run_stage(ctx, index, resume=True).objective
    if objective is None:
        raise RuntimeError(f"{variant.name}: the last stage had finished earlier in {out}; use a new --out")
    return ctx, objective.encoder, objective.tokenizer


def evaluate_variant(
    ctx: RunContext,
    encoder: torch.nn.Module,
    tokenizer: torch.nn.Module,
    data_dir: Path,
    budget: Budget,
    seed: int,
) -> tuple[float, list[Any]]:
    """Linear-probe accuracy of E and held-out per-level usage of the tokenizer."""
    probe = budget.probe
    splits: ProbeSplits = probe_splits(data_dir, ctx.config, probe)
    preprocess = build_preprocessor(ctx.config)
    train = pooled_features(encoder, preprocess, splits.train, probe.batch_size, splits.noise_std, seed)
    test = pooled_features(encoder, preprocess, splits.test, probe.batch_size, splits.noise_std, seed + 1)
    accuracy = linear_probe(train, test, len(splits.train.labels), probe, seed)
    usage = held_out_usage(tokenizer, preprocess, splits.test, probe.batch_size)
    return accuracy, usage


def replicate(
    data: Path, out: Path, budget: Budget, seeds: int, modalities: tuple[str, ...]
) -> list[RunResult]:
    for modality in modalities:
        folder = data / DATASETS[modality]
        if not (folder / "train").is_dir():
            raise FileNotFoundError(
                f"{folder}/train is missing: run `python -m training.demo_data --out {data}`"
            )
    results = []
    runs = [(m, s, v) for m in modalities for s in range(seeds) for v in VARIANTS]
    for modality, seed, variant in tqdm(runs, desc="replication runs", unit="run"):
        folder = data / DATASETS[modality]
        seed_dir = out / "runs" / modality / f"seed{seed}"
        ctx, encoder, tokenizer = train_variant(variant, budget, modality, folder / "train", seed, seed_dir)
        accuracy, usage = evaluate_variant(ctx, encoder, tokenizer, folder, budget, seed)
        results.append(
            RunResult(
                modality,
                seed,
                variant.name,
                accuracy,
                [u.usage_rate for u in usage],
                [u.perplexity for u in usage],
            )
        )
    return results


# ---- the report -------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (variant, modality): accuracy mean/std over seeds, per-level usage means."""
    rows = []
    for modality in dict.fromkeys(r.modality for r in results):
        for variant in VARIANTS:
            runs = [r for r in results if r.modality == modality and r.variant == variant.name]
            if not runs:
                continue
            mean, std = _mean_std([r.accuracy for r in runs])
            levels = len(runs[0].usage_rate)
            rows.append(
                {
                    "variant": variant.name,
                    "modality": modality,
                    "seeds": len(runs),
                    "accuracy_mean": mean,
                    "accuracy_std": std,
                    "usage_rate": [statistics.fmean(r.usage_rate[i] for r in runs) for i in range(levels)],
                    "perplexity": [statistics.fmean(r.perplexity[i] for r in runs) for i in range(levels)],
                }
            )
    return rows


def markdown_table(rows: list[dict[str, Any]], tasks: dict[str, str]) -> str:
    columns = [
        "variant",
        "modality",
        "probe accuracy (mean ± std)",
        "seeds",
        "usage rate per level",
        "perplexity per level",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        usage = " / ".join(f"{u:.2f}" for u in r["usage_rate"])
        ppl = " / ".join(f"{p:.1f}" for p in r["perplexity"])
        lines.append(
            f"| {r['variant']} | {r['modality']} | {100 * r['accuracy_mean']:.1f} ± "
            f"{100 * r['accuracy_std']:.1f} % | {r['seeds']} | {usage} | {ppl} |"
        )
    notes = [f"- {m}: {t}" for m, t in tasks.items()]
    return "\n".join([*lines, "", "Probe tasks (held-out split):", *notes]) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    modalities = list(dict.fromkeys(r["modality"] for r in rows))
    fig, axes = plt.subplots(1, len(modalities), figsize=(5 * len(modalities), 4), squeeze=False)
    for ax, modality in zip(axes[0], modalities, strict=True):
        mine = [r for r in rows if r["modality"] == modality]
        ax.bar(
            range(len(mine)),
            [100 * r["accuracy_mean"] for r in mine],
            yerr=[100 * r["accuracy_std"] for r in mine],
            capsize=4,
        )
        ax.set_xticks(range(len(mine)), [r["variant"] for r in mine], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("linear-probe accuracy (%)")
        ax.set_title(modality)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(modalities), figsize=(5 * len(modalities), 7), squeeze=False)
    for col, modality in enumerate(modalities):
        for r in (r for r in rows if r["modality"] == modality):
            levels = range(1, len(r["usage_rate"]) + 1)
            axes[0][col].plot(levels, r["usage_rate"], marker="o", label=r["variant"])
            axes[1][col].plot(levels, r["perplexity"], marker="o", label=r["variant"])
        axes[0][col].set_title(f"{modality}: held-out code usage")
        axes[0][col].set_ylabel("usage rate")
        axes[1][col].set_ylabel("perplexity")
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("RQ level")
        for ax in (axes[0][col], axes[1][col]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # levels are whole numbers
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "usage.png", dpi=100)
    plt.close(fig)


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    data: Path = typer.Option(Path("data"), help="demo data root (python -m training.demo_data)"),
    out: Path = typer.Option(Path("results/replication"), help="folder for the results"),
    budget_name: str = typer.Option("full", "--budget", help=f"one of {sorted(BUDGETS)}"),
    seeds: int = typer.Option(3, min=1, help="seeds per variant and modality"),
    modalities: list[str] = typer.Option(["audio", "image"], "--modality", help=f"any of {sorted(DATASETS)}"),
) -> None:
    """Train every variant on every modality and seed; write and print the comparison."""
    if budget_name not in BUDGETS:
        raise typer.BadParameter(f"must be one of {sorted(BUDGETS)}", param_hint="--budget")
    unknown = sorted(set(modalities) - set(DATASETS))
    if unknown:
        raise typer.BadParameter(f"{unknown} are not among {sorted(DATASETS)}", param_hint="--modality")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    tic = time.perf_counter()
    budget = BUDGETS[budget_name]
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = replicate(data, out, budget, seeds, tuple(modalities))
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    rows = summarize(results)
    tasks = {m: _task_name(m, budget) for m in modalities}
    table = markdown_table(rows, tasks)
    seconds = time.perf_counter() - tic
    report = {
        "budget": budget_name,
        "seeds": seeds,
        "seconds": seconds,
        "tasks": tasks,
        "rows": rows,
        "runs": [r.__dict__ for r in results],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(table, encoding="utf-8")
    plot(rows, out)
    typer.echo(table)
    typer.echo(f"wall time {seconds:.0f} s; results in {out}")


def _task_name(modality: str, budget: Budget) -> str:
    if modality == "audio":
        return "voice identification on held-out clips of the training voices"
    return f"digits under Gaussian pixel noise (std {budget.probe.image_noise_std:g} of the 0..255 range)"


if __name__ == "__main__":
    app()
