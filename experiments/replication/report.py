"""The replication's report: tables, paired comparisons for the claims, plain verdicts, plots, TensorBoard.

Input is the raw record of a run (`Records`); everything here is computed from it, nothing is typed in.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.replication.plan import ITER1, ITER1_LONG, RANDOM_INIT, RAW, TokenizerArm, by_role, encoders
from experiments.replication.stats import Interval, interval, paired

ITER1_TOKENIZER = "iter1-random-proj"  # the frozen random-projection tokenizer iteration 1 learns from


def tokenizers(arms: tuple[TokenizerArm, ...]) -> tuple[str, ...]:
    return (ITER1_TOKENIZER, *(a.name for a in arms))


@dataclass
class Records:
    """Everything a run measured, one dict per measurement (see replicate.py for the keys)."""

    scores: list[dict[str, Any]] = field(default_factory=list)  # modality seed variant metric value
    usage: list[dict[str, Any]] = field(default_factory=list)  # modality seed tokenizer held_out seen ...
    curves: list[dict[str, Any]] = field(default_factory=list)  # modality seed variant stage step loss usage


@dataclass(frozen=True)
class Comparison:
    claim: str
    modality: str
    metric: str  # a probe metric, or "usage L<level>"
    a: str
    b: str
    diff: Interval


def _by_seed(rows: list[dict[str, Any]], value: str, **match: Any) -> dict[int, float]:
    return {r["seed"]: r[value] for r in rows if all(r[k] == v for k, v in match.items())}


def _usage_by_seed(records: Records, modality: str, tokenizer: str, level: int) -> dict[int, float]:
    return {
        r["seed"]: r["held_out"][level]
        for r in records.usage
        if r["modality"] == modality and r["tokenizer"] == tokenizer and level < len(r["held_out"])
    }


def comparisons(
    records: Records, metrics: dict[str, list[str]], arms: tuple[TokenizerArm, ...]
) -> list[Comparison]:
    """The paired differences behind claims (a)-(d), per modality and probe metric / RQ level."""
    role = by_role(arms)
    main, rq, vq = role["main"].encoder, role["rq-equal-bits"].encoder, role["vq-equal-bits"].encoder
    tok, random_init = role["main"].name, role["random-init"].name
    encoder_pairs = [
        ("a", ITER1, RANDOM_INIT),
        ("a", main, RANDOM_INIT),
        ("a", ITER1, RAW),
        ("a", main, RAW),
        ("b", main, ITER1),
        ("b", main, ITER1_LONG),
        ("b", ITER1_LONG, ITER1),
        ("c", rq, vq),
    ]
    usage_pairs = [
        ("d", tok, random_init),
        ("d", tok, role["static"].name),
        ("d", random_init, role["random-static"].name),
    ]
    out = []
    for modality, names in metrics.items():
        mine = [r for r in records.scores if r["modality"] == modality]
        for claim, a, b in encoder_pairs:
            for metric in names:
                va = _by_seed(mine, "value", variant=a, metric=metric)
                vb = _by_seed(mine, "value", variant=b, metric=metric)
                if va and vb:
                    out.append(Comparison(claim, modality, metric, a, b, paired(va, vb)))
        for claim, a, b in usage_pairs:
            for level in range(4):
                va, vb = (
                    _usage_by_seed(records, modality, a, level),
                    _usage_by_seed(records, modality, b, level),
                )
                if va and vb:
                    out.append(Comparison(claim, modality, f"usage L{level + 1}", a, b, paired(va, vb)))
    return out


# ---- markdown ---------------------------------------------------------------------------------------------


def _pct(i: Interval) -> str:
    if i.n < 2:
        return f"{100 * i.mean:.1f}"
    return f"{100 * i.mean:.1f} [{100 * i.low:.1f}, {100 * i.high:.1f}]"


def _pp(i: Interval) -> str:
    if i.n < 2:
        return f"{100 * i.mean:+.1f}"
    return f"{100 * i.mean:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}]"


def encoder_table(records: Records, metrics: dict[str, list[str]], arms: tuple[TokenizerArm, ...]) -> str:
    columns = [(m, k) for m, names in metrics.items() for k in names]
    head = ["encoder", *(f"{m} {k} (%)" for m, k in columns), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in encoders(arms):
        cells, seeds = [], {}
        for modality, metric in columns:
            values = list(
                _by_seed(records.scores, "value", modality=modality, variant=variant, metric=metric).values()
            )
            cells.append(_pct(interval(values)) if values else "-")
            seeds[modality] = max(seeds.get(modality, 0), len(values))
        counts = set(seeds.values())
        shown = str(counts.pop()) if len(counts) == 1 else ", ".join(f"{m} {n}" for m, n in seeds.items())
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines)


def tokenizer_table(records: Records, arms: tuple[TokenizerArm, ...]) -> str:
    head = [
        "modality",
        "tokenizer",
        "held-out usage per level",
        "training-data usage per level",
        "held-out perplexity per level",
        "effective rank of T's vectors",
        "effective rank of the teacher's features",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for modality in dict.fromkeys(r["modality"] for r in records.usage):
        for tokenizer in tokenizers(arms):
            rows = [r for r in records.usage if r["modality"] == modality and r["tokenizer"] == tokenizer]
            if not rows:
                continue

            def per_level(key: str, fmt: str, rows: list[dict[str, Any]] = rows) -> str:
                levels = len(rows[0][key])
                return " / ".join(
                    fmt.format(statistics.fmean(r[key][i] for r in rows)) for i in range(levels)
                )

            rank = statistics.fmean(r["effective_rank"] for r in rows)
            teacher = [r["teacher_rank"] for r in rows if r["teacher_rank"] is not None]
            teacher_cell = f"{statistics.fmean(teacher):.1f}" if teacher else "-"
            lines.append(
                f"| {modality} | {tokenizer} | {per_level('held_out', '{:.2f}')} | "
                f"{per_level('seen', '{:.2f}')} | {per_level('perplexity', '{:.0f}')} | {rank:.1f} | "
                f"{teacher_cell} |"
            )
    return "\n".join(lines)


def comparison_table(comps: list[Comparison]) -> str:
    head = ["claim", "modality", "measure", "a - b (paired, 95 % interval)", "a", "b", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comps:
        unit = " pp" if not c.metric.startswith("usage") else " pp of codes"
        lines.append(
            f"| ({c.claim}) | {c.modality} | {c.metric} | {_pp(c.diff)}{unit} | {c.a} | {c.b} | "
            f"{c.diff.verdict()} |"
        )
    return "\n".join(lines)


CLAIMS = {
    "a": "pretrained beats random init (and the raw-input control)",
    "b": "iteration 2 beats iteration 1 (and the compute-matched iter1-long)",
    "c": "RQ at least matches VQ at equal bits per patch",
    "d": "k-means init and EMA raise per-level code usage (held-out)",
}


def verdicts(comps: list[Comparison]) -> str:
    """One plain line per claim and comparison: how many measures are higher / lower / undecided."""
    lines = []
    for claim, text in CLAIMS.items():
        lines.append(f"- **({claim}) {text}**")
        groups: dict[tuple[str, str, str], list[Comparison]] = defaultdict(list)
        for c in comps:
            if c.claim == claim:
                groups[c.modality, c.a, c.b].append(c)
        for (modality, a, b), cs in groups.items():
            counts: dict[str, list[str]] = defaultdict(list)
            for c in cs:
                counts[c.diff.verdict()].append(f"{c.metric} {_pp(c.diff)}")
            parts = [f"{v} on {len(m)} ({'; '.join(m)})" for v, m in counts.items()]
            lines.append(f"  - {modality}, {a} vs {b}: " + ", ".join(parts))
    return "\n".join(lines)


# ---- plots and TensorBoard --------------------------------------------------------------------------------


def _mean_curve(curves: list[dict[str, Any]], key: str) -> tuple[list[int], list[Any]]:
    """Mean over seeds of a curve recorded at the same steps in every seed."""
    steps = curves[0]["step"]
    n = min(len(c[key]) for c in curves)
    values = [c[key][:n] for c in curves]
    if key == "usage":
        levels = min(len(v[0]) for v in values if v and v[0]) if any(v and v[0] for v in values) else 0
        mean = [[statistics.fmean(v[i][lvl] for v in values) for lvl in range(levels)] for i in range(n)]
    else:
        mean = [statistics.fmean(v[i] for v in values) for i in range(n)]
    return steps[:n], mean


def _grouped_curves(records: Records) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in records.curves:
        groups[c["modality"], c["variant"], c["stage"]].append(c)
    return groups


def plot(
    records: Records, metrics: dict[str, list[str]], arms: tuple[TokenizerArm, ...], out: Path
) -> list[str]:
    """accuracy.png, usage.png, usage_steps.png, losses.png in `out` -> their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    panels = [(m, k) for m, ks in metrics.items() for k in ks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (modality, metric) in zip(axes[0], panels, strict=True):
        means, errs, labels = [], [[], []], []
        for variant in encoders(arms):
            values = list(
                _by_seed(records.scores, "value", modality=modality, variant=variant, metric=metric).values()
            )
            if not values:
                continue
            i = interval(values)
            means.append(100 * i.mean)
            errs[0].append(100 * (i.mean - i.low))
            errs[1].append(100 * (i.high - i.mean))
            labels.append(variant)
        ax.bar(range(len(means)), means, yerr=errs, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{modality}: {metric}", fontsize=9)
        ax.set_ylabel("accuracy (%), mean and 95 % interval")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    names.append("accuracy.png")

    modalities = list(dict.fromkeys(r["modality"] for r in records.usage))
    fig, axes = plt.subplots(1, len(modalities), figsize=(5.5 * len(modalities), 4), squeeze=False)
    for ax, modality in zip(axes[0], modalities, strict=True):
        for tokenizer in tokenizers(arms):
            rows = [r for r in records.usage if r["modality"] == modality and r["tokenizer"] == tokenizer]
            if not rows:
                continue
            levels = range(len(rows[0]["held_out"]))
            ints = [interval([r["held_out"][lvl] for r in rows]) for lvl in levels]
            ax.errorbar(
                [lvl + 1 for lvl in levels],
                [i.mean for i in ints],
                yerr=[[i.mean - i.low for i in ints], [i.high - i.mean for i in ints]],
                marker="o",
                capsize=3,
                label=tokenizer,
            )
        ax.set(
            title=f"{modality}: held-out code usage", xlabel="RQ level", ylabel="usage rate", ylim=(0, 1.05)
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "usage.png", dpi=100)
    plt.close(fig)
    names.append("usage.png")

    groups = _grouped_curves(records)
    arm_names = [a.name for a in arms]
    fig, axes = plt.subplots(
        len(modalities), len(arm_names), figsize=(3.3 * len(arm_names), 3 * len(modalities)), squeeze=False
    )
    for row, modality in enumerate(modalities):
        for col, arm in enumerate(arm_names):
            ax = axes[row][col]
            curves = groups.get((modality, arm, "tokenizer"))
            if curves:
                steps, usage = _mean_curve(curves, "usage")
                for lvl in range(len(usage[0]) if usage else 0):
                    ax.plot(steps, [u[lvl] for u in usage], label=f"level {lvl + 1}")
                ax.legend(fontsize=6)
            ax.set(ylim=(0, 1.05), xlabel="distillation step")
            ax.set_title(f"{modality}: {arm}", fontsize=8)
            if col == 0:
                ax.set_ylabel("usage rate (training batches)")
    fig.tight_layout()
    fig.savefig(out / "usage_steps.png", dpi=100)
    plt.close(fig)
    names.append("usage_steps.png")

    fig, axes = plt.subplots(len(modalities), 2, figsize=(12, 3.6 * len(modalities)), squeeze=False)
    for row, modality in enumerate(modalities):
        for (m, variant, stage), curves in sorted(groups.items()):
            if m != modality:
                continue
            steps, loss = _mean_curve(curves, "loss")
            if stage == "tokenizer":
                axes[row][1].plot(steps, loss, label=variant)
            else:  # continuations of iter1 start where its pretrain1 ended
                shift = 0 if stage == "pretrain1" else _pretrain1_steps(groups, modality)
                label = "iter1 (pretrain1)" if stage == "pretrain1" else variant
                axes[row][0].plot([s + shift for s in steps], loss, label=label)
        axes[row][0].set(
            title=f"{modality}: masked-code loss (iteration 1, then its continuations)", xlabel="encoder step"
        )
        axes[row][1].set(title=f"{modality}: distillation loss (L_cos + L_cb)", xlabel="tokenizer step")
        for ax in axes[row]:
            ax.set_ylabel("training loss (mean over seeds)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)
    plt.close(fig)
    names.append("losses.png")
    return names


def _pretrain1_steps(groups: dict[tuple[str, str, str], list[dict[str, Any]]], modality: str) -> int:
    first = groups.get((modality, ITER1, "pretrain1"))
    return max(first[0]["step"]) if first else 0


def tensorboard(records: Records, out: Path) -> None:
    """Mean training curves (loss, usage per level) and per-seed probe scores, one run per variant."""
    from torch.utils.tensorboard import SummaryWriter

    for (modality, variant, stage), curves in _grouped_curves(records).items():
        with SummaryWriter(str(out / modality / variant)) as writer:
            steps, loss = _mean_curve(curves, "loss")
            for s, v in zip(steps, loss, strict=True):
                writer.add_scalar(f"{stage}/loss", v, s)
            steps, usage = _mean_curve(curves, "usage")
            for s, levels in zip(steps, usage, strict=True):
                for lvl, u in enumerate(levels):
                    writer.add_scalar(f"{stage}/usage_level{lvl + 1}", u, s)
    for r in records.scores:
        with SummaryWriter(str(out / r["modality"] / r["variant"])) as writer:
            writer.add_scalar(f"probe/{r['metric']}", r["value"], r["seed"])
