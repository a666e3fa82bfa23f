"""The benchmark's report: <out>/README.md's tables and the loss and code-usage plots.

Units of a paired difference: one fine-tuning run pair sharing a part (fold) and a seed, i.e. the same
pretrained E, the same labelled examples, the same head initialisation and batch order. The interval is the
95 % Student-t interval over those pairs (experiments/replication/stats.py). Seeds vary the fine-tuning
only: each part is pretrained once, so the intervals do not cover the variance of pretraining itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridle.model.atomic import atomic_write_bytes
from bridle.training.state import load_stage
from experiments.benchmarks.plan import BENCHMARKS, SEEDS
from experiments.replication.stats import Interval, interval, paired

ROWS = "ssl.json"


def _pct(i: Interval) -> str:
    return f"{100 * i.mean:.1f} [{100 * i.low:.1f}, {100 * i.high:.1f}] (n={i.n})"


def _by_unit(rows: list[dict[str, Any]], **match: Any) -> dict[tuple[str, int], float]:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return {(r["split"], int(r["seed"])): float(r["accuracy"]) for r in hits}


def tables(rows: list[dict[str, Any]]) -> str:
    lines = []
    for name, bench in BENCHMARKS.items():
        mine = [r for r in rows if r["dataset"] == name]
        if not mine:
            continue
        lines += [
            f"### {name} ({', '.join(p.name for p in bench.parts)})",
            "",
            "| labels | bridle | random-init | features | bridle - random-init | bridle - features |",
            "|---|---|---|---|---|---|",
        ]
        for labels in bench.fractions:
            arms = {
                arm: _by_unit(mine, arm=arm, labels=labels) for arm in ("bridle", "random-init", "features")
            }
            cells = [_pct(interval(list(v.values()))) if v else "-" for v in arms.values()]
            diffs = []
            for other in ("random-init", "features"):
                if set(arms["bridle"]) & set(arms[other]):
                    d = paired(arms["bridle"], arms[other])  # type: ignore[arg-type]
                    diffs.append(
                        f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] {d.verdict()}"
                    )
                else:
                    diffs.append("-")
            lines.append(f"| {labels:g} | {' | '.join(cells)} | {' | '.join(diffs)} |")
        lines.append("")
        if len(bench.parts) > 1:
            lines += _fold_means(mine, bench.fractions)
    return "\n".join(lines)


def _fold_means(rows: list[dict[str, Any]], fractions: tuple[float, ...]) -> list[str]:
    """Per seed, the mean over the parts (the two-fold cross-validation figure), then over seeds."""
    out = [
        "Two-fold cross-validation (per seed, the mean of the two folds; then the interval over seeds):",
        "",
    ]
    out += ["| labels | " + " | ".join(("bridle", "random-init", "features")) + " |", "|---|---|---|---|"]
    for labels in fractions:
        cells = []
        for arm in ("bridle", "random-init", "features"):
            per_seed = []
            for seed in SEEDS:
                folds = [
                    r["accuracy"]
                    for r in rows
                    if r["arm"] == arm and r["labels"] == labels and r["seed"] == seed
                ]
                if len(folds) == 2:
                    per_seed.append(sum(folds) / 2)
            cells.append(_pct(interval(per_seed)) if per_seed else "-")
        out.append(f"| {labels:g} | {' | '.join(cells)} |")
    return [*out, ""]


def plot_pretraining(runs: Path, out: Path) -> list[str]:
    """Loss and per-level code usage over the steps of every pretraining stage; the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, bench in BENCHMARKS.items():
        parts = [p for p in bench.parts if (runs / name / p.name.replace(">", "") / "pretrain").is_dir()]
        if not parts:
            continue
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), squeeze=False)
        for part in parts:
            pretrain = runs / name / part.name.replace(">", "") / "pretrain"
            for col, stage in enumerate(("pretrain1", "tokenizer1", "pretrain2")):
                state = load_stage(pretrain / stage)
                if state is None or "history" not in state.extra:
                    continue
                h = state.extra["history"]
                axes[0][col].plot(h["step"], h["loss"], label=part.name)
                axes[0][col].set_title(f"{stage}: loss")
                usage = [u for u in h["usage"] if u]
                for level in range(len(usage[0]) if usage else 0):
                    steps = [s for s, u in zip(h["step"], h["usage"], strict=True) if u]
                    axes[1][col].plot(steps, [u[level] for u in usage], label=f"{part.name} L{level + 1}")
                axes[1][col].set_title(f"{stage}: code usage per level (training batches)")
                axes[1][col].set_ylim(0, 1.05)
                axes[1][col].set_xlabel("step")
        for ax in axes.flat:
            if ax.lines:
                ax.legend(fontsize=6)
        fig.suptitle(f"{name}: BRIDLE pretraining")
        fig.tight_layout()
        path = out / f"{name}-pretraining.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    return written


def write_report(out: Path, runs: Path) -> None:
    rows = json.loads((out / ROWS).read_text(encoding="utf-8")) if (out / ROWS).is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_pretraining(runs, out)
    text = [
        "# BRIDLE on real benchmarks: does pretraining help? (generated by experiments/ssl_benchmark.py)",
        "",
        "Accuracy in %, mean [95 % interval] over (fold, seed) units; paired differences in points.",
        "",
        tables(rows),
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    atomic_write_bytes(out / "tables.md", "\n".join(text).encode())
