"""Why the full budget pretrains at lr 1e-4: iteration 1 at several peak learning rates, probed.

    python -m experiments.replication.lr_sweep [--out results/replication/lr-sweep] [--lr 1e-3 --lr 1e-4 ...]

For one seed and modality, iter1 (E pretrained on the random-projection tokenizer's codes, the replication's
own stage) is trained once per learning rate with the full budget's other settings, and probed like every
replication encoder, beside the same encoder untrained (random-init) and the raw input. Writes
`<out>/lr-sweep.md` and prints it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from bridle.model.preprocessing import build_preprocessor
from experiments.replication.measure import measure_encoder, pretraining_source, probe_data
from experiments.replication.plan import BUDGETS, RANDOM_INIT, RAW
from experiments.replication.report import Records
from experiments.replication.train import random_init_encoder, train_iter1

app = typer.Typer(add_completion=False, help=__doc__)


def sweep(
    modality: str, lrs: list[float], fsdd: Path, out: Path, budget_name: str, seed: int
) -> dict[str, dict[str, float]]:
    """variant -> metric -> probe score (%), for the controls and iter1 at each learning rate."""
    base = BUDGETS[budget_name]
    runs = out / "runs" / modality
    source = pretraining_source(modality, fsdd, runs, base)
    probes = probe_data(modality, fsdd, runs, base)
    records = Records()
    key = {"modality": modality, "seed": seed}
    preprocess = None
    for lr in lrs:
        budget = dataclasses.replace(base, pretrain_lr=lr)
        iter1 = train_iter1(budget, modality, source, seed, runs / f"lr{lr:g}")
        if preprocess is None:
            config = iter1.ctx.config
            preprocess = build_preprocessor(config)
            measure_encoder(records, {**key, "variant": RAW}, None, preprocess, probes, base)
            init = random_init_encoder(config, seed)
            measure_encoder(records, {**key, "variant": RANDOM_INIT}, init, preprocess, probes, base)
        measure_encoder(
            records, {**key, "variant": f"iter1 lr {lr:g}"}, iter1.encoder, preprocess, probes, base
        )
    table: dict[str, dict[str, float]] = {}
    for row in records.scores:
        table.setdefault(row["variant"], {})[row["metric"]] = row["value"]
    return table


def markdown(
    tables: dict[str, dict[str, dict[str, float]]], command: str, budget_name: str, seed: int
) -> str:
    b = BUDGETS[budget_name]
    lines = [
        "# Iteration 1's learning rate",
        "",
        f"Produced by `{command}`: iter1 trained for {b.pretrain_steps} steps at batch {b.batch_size} "
        f"(budget `{budget_name}`, seed {seed}) at each peak learning rate, probed as in results.md (%).",
    ]
    for modality, table in tables.items():
        metrics = sorted({m for scores in table.values() for m in scores})
        lines += ["", f"## {modality}", "", "| encoder | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---|" * len(metrics))
        for variant, scores in table.items():
            lines.append(f"| {variant} | " + " | ".join(f"{100 * scores[m]:.1f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    out: Path = typer.Option(
        Path("results/replication/lr-sweep"), help="folder for the runs and lr-sweep.md"
    ),
    fsdd: Path = typer.Option(Path("../shared/data/fsdd"), help="folder of FSDD recordings"),
    modalities: list[str] = typer.Option(["image"], "--modality"),
    lrs: list[float] = typer.Option([1e-3, 3e-4, 1e-4, 3e-5], "--lr"),
    budget_name: str = typer.Option("full", "--budget"),
    seed: int = typer.Option(0),
) -> None:
    if budget_name not in BUDGETS:
        typer.echo(f"error: unknown budget {budget_name!r}; choose from {sorted(BUDGETS)}", err=True)
        raise typer.Exit(2)
    tables = {m: sweep(m, lrs, fsdd, out, budget_name, seed) for m in modalities}
    flags = " ".join(f"--modality {m}" for m in modalities) + " " + " ".join(f"--lr {lr:g}" for lr in lrs)
    command = f"python -m experiments.replication.lr_sweep --budget {budget_name} {flags}"
    text = markdown(tables, command, budget_name, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lr-sweep.md").write_text(text, encoding="utf-8")
    typer.echo(text)


if __name__ == "__main__":
    app()
