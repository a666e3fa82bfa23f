"""Small-scale replication of BRIDLE's claims on real data, with controls, seeds and paired differences.

    python -m experiments.replicate --fsdd ../shared/data/fsdd --out results/replication
                                 [--budget full|reduced|micro] [--seeds 3] [--modality audio --modality image]

Per modality and seed (experiments/replication/plan.py lists the variants):
    audio   E pretrained on FSDD's real recordings (its training takes, unlabelled); probed by digit
            recognition, leave-one-speaker-out over the FSDD speakers, on frozen pooled features
    image   E pretrained on the demo image set (scikit-learn's digits); probed with 5 and 10 labels per
            class (logistic regression) and k-NN with 10 labels per class, on the clean test split
Controls: the same encoder randomly initialised, and the raw input (log-mel statistics / pixels).
Every tokenizer's per-level code usage is measured on held-out inputs and on as many training inputs,
with the effective rank of what it quantizes; usage over training steps comes from the stage monitors.
Output in --out: results.md (printed at the end), results.json, PNG figures, tensorboard/ (mean curves
and probe scores) and runs/ (every stage, with its own TensorBoard logs).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import typer
from tqdm import tqdm

from bridle.model.logs import log_to_stderr
from bridle.model.preprocessing import build_preprocessor
from experiments.probe import (
    ProbeData,
)
from experiments.replication.measure import measure_encoder, measure_tokenizer, pretraining_source, probe_data
from experiments.replication.plan import BUDGETS, ITER1, ITER1_LONG, RANDOM_INIT, RAW, Budget
from experiments.replication.report import (
    CLAIMS,
    ITER1_TOKENIZER,
    Records,
    comparison_table,
    comparisons,
    encoder_table,
    plot,
    tensorboard,
    tokenizer_table,
    verdicts,
)
from experiments.replication.train import (
    Trained,
    random_init_encoder,
    stage_history,
    train_arm,
    train_iter1,
    train_iter1_long,
)

log = logging.getLogger(__name__)

MODALITIES = ("audio", "image")
RAW_RECORDS = "records.json"


# ---- one modality -----------------------------------------------------------------------------------------


def record_curves(records: Records, key: dict[str, Any], trained: Trained) -> None:
    for stage in trained.stages:
        history = stage_history(trained.ctx.out_dir / stage)
        records.curves.append({**key, "stage": stage, **history})


def replicate_seed(
    records: Records,
    modality: str,
    source: Path,
    seed: int,
    seed_dir: Path,
    budget: Budget,
    probes: ProbeData,
    bar: tqdm,
) -> None:
    """Every variant of one modality and seed, trained and measured (see plan.py)."""
    batch = budget.probe.batch_size
    iter1 = train_iter1(budget, modality, source, seed, seed_dir)
    bar.update()
    config = iter1.ctx.config
    preprocess = build_preprocessor(config)
    key = {"modality": modality, "seed": seed}
    measure_encoder(records, {**key, "variant": RAW}, None, preprocess, probes, budget)
    measure_encoder(
        records,
        {**key, "variant": RANDOM_INIT},
        random_init_encoder(config, seed),
        preprocess,
        probes,
        budget,
    )
    measure_encoder(records, {**key, "variant": ITER1}, iter1.encoder, preprocess, probes, budget)
    measure_tokenizer(
        records, {**key, "tokenizer": ITER1_TOKENIZER}, iter1, iter1.encoder, preprocess, probes, batch
    )
    record_curves(records, {**key, "variant": ITER1}, iter1)

    long = train_iter1_long(budget, modality, source, seed, seed_dir)
    bar.update()
    measure_encoder(records, {**key, "variant": ITER1_LONG}, long.encoder, preprocess, probes, budget)
    record_curves(records, {**key, "variant": ITER1_LONG}, long)

    for arm in budget.arms:
        trained = train_arm(arm, budget, modality, source, seed, seed_dir)
        bar.update()
        measure_tokenizer(
            records, {**key, "tokenizer": arm.name}, trained, iter1.encoder, preprocess, probes, batch
        )
        if arm.pretrain:
            measure_encoder(
                records, {**key, "variant": arm.encoder}, trained.encoder, preprocess, probes, budget
            )
        record_curves(records, {**key, "variant": arm.name}, trained)


def replicate_modality(
    modality: str,
    source: Path,
    fsdd: Path,
    runs: Path,
    budget: Budget,
    seeds: range,
    threads: int | None,
) -> Records:
    """Every seed of one modality (run in a worker process when `threads` is given)."""
    if threads is not None:
        torch.set_num_threads(threads)
    records = Records()
    bar = tqdm(total=len(seeds) * (2 + len(budget.arms)), desc=f"{modality} variants", unit="variant")
    probes = probe_data(modality, fsdd, runs, budget)
    for seed in seeds:
        replicate_seed(records, modality, source, seed, runs / f"seed{seed}", budget, probes, bar)
        partial = {"seeds_done": seed + 1 - seeds.start, **records.__dict__}
        (runs / RAW_RECORDS).write_text(json.dumps(partial) + "\n", encoding="utf-8")  # per seed
    bar.close()
    return records


def replicate(
    fsdd: Path, out: Path, budget: Budget, seeds: range, modalities: tuple[str, ...], jobs: int = 1
) -> Records:
    """Every modality, one after the other (jobs=1) or in `jobs` processes of cores/jobs threads each."""
    runs = out / "runs"
    sources = {m: pretraining_source(m, fsdd, runs / m, budget) for m in modalities}  # fails early
    args = [(m, sources[m], fsdd, runs / m, budget, seeds) for m in modalities]
    if jobs == 1:
        parts = [replicate_modality(*a, None) for a in args]
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(replicate_modality, *zip(*args, strict=True), [threads] * len(args)))
    records = Records()
    for part in parts:
        records.scores += part.scores
        records.usage += part.usage
        records.curves += part.curves
    return records


# ---- the report -------------------------------------------------------------------------------------------


def report_markdown(
    records: Records,
    budget_name: str,
    budget: Budget,
    seeds: int | str,
    command: str,
    seconds: float,
    load: tuple[list[float], list[float]],
    metrics: dict[str, list[str]],
    figures: list[str],
    threads: str,
) -> str:
    comps = comparisons(records, metrics, budget.arms)
    b = budget
    return "\n".join(
        [
            "# Small-scale replication of BRIDLE's claims",
            "",
            f"Produced by `{command}` (budget `{budget_name}`: {b.note}).",
            f"Seeds: {seeds}; wall time {_minutes(seconds)}; {_load(seconds, load)}; {threads}.",
            "",
            "## Setup",
            "",
            *setup_lines(budget),
            "",
            "## Encoders: probe accuracy (%), mean [95 % interval]",
            "",
            encoder_table(records, metrics, budget.arms),
            "",
            "## Tokenizers: code usage (mean over seeds)",
            "",
            "Usage rate = share of a level's codes used at least once; the held-out and training-data sets "
            "have the same number of inputs. Effective rank: participation ratio of the covariance spectrum.",
            "",
            tokenizer_table(records, budget.arms),
            "",
            "## Claims: paired differences (a - b, same seed, same iteration-1 encoder)",
            "",
            comparison_table(comps),
            "",
            "## Reading (generated from the intervals above)",
            "",
            "'higher' / 'lower': the 95 % interval of the paired difference excludes 0; otherwise no "
            "difference could be detected at this number of seeds.",
            "",
            verdicts(comps),
            "",
            "## Figures",
            "",
            *(f"![{name}]({name})" for name in figures),
            "",
        ]
    )


def _minutes(seconds: float) -> str:
    return "in the runs' logs" if math.isnan(seconds) else f"{seconds / 60:.1f} min"


def _load(seconds: float, load: tuple[list[float], list[float]]) -> str:
    if math.isnan(seconds):  # a combined report: the load was the runs'
        return "load average in the runs' logs"
    start, end = ("/".join(f"{x:.1f}" for x in values) for values in load)
    return f"load average (1/5/15 min) {start} at the start, {end} at the end"


def setup_lines(b: Budget) -> list[str]:
    p = b.probe
    labels = ", ".join(map(str, p.label_budgets))
    return [
        f"- Model: the `{b.size}` presets; each stage {b.pretrain_steps} pretraining or "
        f"{b.tokenizer_steps} distillation steps, batch {b.batch_size}, "
        f"lr {b.pretrain_lr:g} (pretraining) / {b.tokenizer_lr:g} (distillation) "
        "(warm-up 10 %, cosine decay).",
        "- Audio: E pretrains on FSDD's real recordings, its training takes (index >= 5) of every "
        "speaker, unlabelled. Probe: digit recognition, leave-one-speaker-out over the FSDD speakers "
        "(logistic regression on frozen pooled features; the held-out speaker's labels are never seen, "
        "its unlabelled training takes were in pretraining). Code usage: on FSDD's test takes "
        "(index < 5, never trained on).",
        "- Image: E pretrains on scikit-learn's digits (train split, upscaled to RGB). Probes on the "
        f"clean test split: logistic regression with {labels} labels per class and {p.knn_k}-NN "
        f"(cosine) with {p.knn_labels} labels per class, each the mean over {p.draws} label draws "
        "(the same draws for every variant of a seed).",
        "- Controls: `raw-input` (log-mel mean and std per mel bin over time / pixels, no network) and "
        "`random-init` (iter1's own initial weights, never trained). `iter1-long` continues iter1 on "
        "the same random-projection targets for as many steps as iteration 2 adds (compute-matched).",
        "- Every iteration-2 variant of a seed continues that seed's iter1 encoder, so differences are "
        "paired by seed. Intervals are 95 % Student-t over seeds.",
    ]


app = typer.Typer(add_completion=False, help=__doc__)


def saved_records(out: Path, budget_name: str, merge: list[Path]) -> dict[str, Any]:
    """The raw records of a finished run; or, for an interrupted run and for seeds trained by separate
    runs (`--first-seed`) to be merged, those each modality saved after every complete seed, combined."""
    if (out / RAW_RECORDS).is_file() and not merge:
        return json.loads((out / RAW_RECORDS).read_text(encoding="utf-8"))
    files = []
    for folder in [out, *merge]:
        final = folder / RAW_RECORDS
        files += [final] if final.is_file() else sorted((folder / "runs").glob(f"*/{RAW_RECORDS}"))
    if not files:
        typer.echo(f"error: no {RAW_RECORDS} in {out} or {out}/runs/*: run the replication first", err=True)
        raise typer.Exit(1)
    keep: dict[str, list[dict[str, Any]]] = {"scores": [], "usage": [], "curves": []}
    owner: dict[tuple[str, int], Path] = {}  # (modality, seed) -> the file that holds it (first wins)
    for file in files:
        part = json.loads(file.read_text(encoding="utf-8"))
        for key in keep:
            for r in part[key]:
                if owner.setdefault((r["modality"], r["seed"]), file) == file:
                    keep[key].append(r)
    by_modality: dict[str, list[int]] = {}
    for modality, seed in sorted(owner):
        by_modality.setdefault(modality, []).append(seed)
    seeds = "; ".join(f"{m}: seeds {', '.join(map(str, s))}" for m, s in by_modality.items())
    sources = ", ".join(str(f) for f in files)
    return {
        "command": f"python -m experiments.replicate --budget {budget_name}; "
        f"--report-only combined {sources}",
        "budget": budget_name,
        "seeds": seeds,
        "seconds": float("nan"),
        "load": [list(os.getloadavg())] * 2,
        "threads": "see the runs' logs",
        **keep,
    }


def write_report(out: Path, raw: dict[str, Any]) -> str:
    """results.md, results.json, the figures and tensorboard/ from a run's raw records -> the markdown."""
    budget = BUDGETS[raw["budget"]]
    records = Records(raw["scores"], raw["usage"], raw["curves"])
    modalities = list(dict.fromkeys(r["modality"] for r in records.scores))
    metrics = {m: budget.probe.metrics(m) for m in modalities}
    figures = plot(records, metrics, budget.arms, out)
    tensorboard(records, out / "tensorboard")
    load = (raw["load"][0], raw["load"][1])
    text = report_markdown(
        records,
        raw["budget"],
        budget,
        raw["seeds"],
        raw["command"],
        raw["seconds"],
        load,
        metrics,
        figures,
        raw["threads"],
    )
    comps = [
        {
            "claim": c.claim,
            "modality": c.modality,
            "measure": c.metric,
            "a": c.a,
            "b": c.b,
            "diff": c.diff.__dict__,
            "reading": c.diff.verdict(),
        }
        for c in comparisons(records, metrics, budget.arms)
    ]
    report = {**{k: v for k, v in raw.items() if k not in ("scores", "usage", "curves")}, "claims": CLAIMS}
    report |= {
        "comparisons": comps,
        "scores": records.scores,
        "usage": records.usage,
        "curves": records.curves,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(text, encoding="utf-8")
    return text


@app.command()
def main(
    fsdd: Path = typer.Option(Path("../shared/data/fsdd"), help="folder of FSDD recordings"),
    out: Path = typer.Option(Path("results/replication"), help="folder for the results"),
    budget_name: str = typer.Option("full", "--budget", help=f"one of {sorted(BUDGETS)}"),
    seeds: int = typer.Option(3, min=1, help="seeds per variant and modality (>= 2 for an interval)"),
    first_seed: int = typer.Option(0, min=0, help="the first seed (seeds may be spread over runs: --merge)"),
    modalities: list[str] = typer.Option(list(MODALITIES), "--modality", help=f"any of {list(MODALITIES)}"),
    jobs: int = typer.Option(1, min=1, help="modalities trained at once, in processes of cores/jobs threads"),
    report_only: bool = typer.Option(False, help=f"no training: rewrite the report from --out/{RAW_RECORDS}"),
    merge: list[Path] = typer.Option([], help="--report-only: also the records of these runs' --out folders"),
) -> None:
    """Train every variant on every modality and seed; write and print the comparison."""
    if budget_name not in BUDGETS:
        raise typer.BadParameter(f"must be one of {sorted(BUDGETS)}", param_hint="--budget")
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise typer.BadParameter(f"{unknown} are not among {list(MODALITIES)}", param_hint="--modality")
    log_to_stderr(logging.WARNING, timestamps=False)
    if report_only:
        typer.echo(write_report(out, saved_records(out, budget_name, merge)))
        return
    command = "python -m experiments.replicate " + shlex.join(sys.argv[1:])
    tic, load_start = time.perf_counter(), list(os.getloadavg())
    budget = BUDGETS[budget_name]
    out.mkdir(parents=True, exist_ok=True)
    try:
        records = replicate(fsdd, out, budget, range(first_seed, first_seed + seeds), tuple(modalities), jobs)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    seconds = time.perf_counter() - tic
    threads = (
        f"{jobs} processes of {max(1, (os.cpu_count() or 1) // jobs)} torch threads"
        if jobs > 1
        else f"1 process of {torch.get_num_threads()} torch threads"
    )
    raw = {
        "command": command,
        "budget": budget_name,
        "seeds": seeds,
        "seconds": seconds,
        "load": [load_start, list(os.getloadavg())],
        "threads": threads,
        "scores": records.scores,
        "usage": records.usage,
        "curves": records.curves,
    }
    (out / RAW_RECORDS).write_text(json.dumps(raw) + "\n", encoding="utf-8")  # before anything can fail
    typer.echo(write_report(out, raw))
    typer.echo(f"wall time {seconds:.0f} s; results in {out}")


if __name__ == "__main__":
    app()
