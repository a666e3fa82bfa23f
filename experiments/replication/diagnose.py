"""Why does an RQ level leave codes unused? Measurements on a finished replication run's tokenizers.

    python -m experiments.replication.diagnose results/replication [--modality audio] [--seed 0]

For every trained tokenizer of the run (and the iteration-1 teacher E it was distilled from), over the same
held-out and training-data inputs as the report, per RQ level l with input residual r_l:

    usage / perplexity    share of the level's codes used, and the effective number of codes
    top-8 share           share of the vectors that go to the level's 8 most used codes
    mean share            ||mean r_l||^2 / mean ||r_l||^2: 1 when every vector points the same way (the
                          codes are chosen by direction, so a dominant common direction leaves few codes
                          in reach); 0 for centred data
    effective rank        participation ratio of r_l's covariance spectrum (1 .. dim)
    mean cosine           mean pairwise cosine between r_l's vectors

Writes `<run>/diagnosis.md` and prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import typer
from torch import nn
from torch.utils.data import DataLoader

from bridle.model.bridle import Distillation
from bridle.model.config import ModelConfig
from bridle.model.encoder import Encoder
from bridle.model.preprocessing import build_preprocessor
from bridle.model.quantizer import _nearest_code
from bridle.model.tokenizer import Tokenizer
from bridle.training.data import MediaDataset
from bridle.training.optim import build_optimizer
from bridle.training.stages import MODEL_CONFIG_FILE
from bridle.training.state import load_stage
from experiments.probe import effective_rank
from experiments.replication.measure import probe_data
from experiments.replication.plan import BUDGETS
from experiments.replication.train import PRETRAIN1, TOKENIZER


@dataclass(frozen=True)
class LevelStats:
    usage: float
    perplexity: float
    top8_share: float
    mean_share: float
    effective_rank: float
    mean_cosine: float


def level_stats(r: torch.Tensor, codes: torch.Tensor, size: int) -> LevelStats:
    """Statistics of one level's input residuals r (N, D) and chosen codes (N,)."""
    counts = torch.bincount(codes, minlength=size).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log2()).sum())
    r = r.double()
    mean_share = float(r.mean(0).pow(2).sum() / r.pow(2).sum(-1).mean())
    unit = torch.nn.functional.normalize(r, dim=-1)
    n = unit.shape[0]
    mean_cosine = float((unit.sum(0).pow(2).sum() - n) / (n * (n - 1)))  # mean over pairs i != j
    return LevelStats(
        usage=float((counts > 0).double().mean()),
        perplexity=2.0**entropy,
        top8_share=float(counts.sort(descending=True).values[:8].sum() / counts.sum()),
        mean_share=mean_share,
        effective_rank=effective_rank(r),
        mean_cosine=mean_cosine,
    )


@torch.no_grad()
def residual_stats(vectors: torch.Tensor, codebooks: torch.Tensor) -> list[LevelStats]:
    """Per-level statistics of quantizing vectors (N, D) with codebooks (L, K, D), as the RQ does."""
    r, stats = vectors, []
    for book in codebooks:
        idx = _nearest_code(r, book)
        stats.append(level_stats(r, idx, book.shape[0]))
        r = r - book[idx]
    return stats


@torch.no_grad()
def embed_all(module: nn.Module, preprocess: nn.Module, data: MediaDataset, batch: int) -> torch.Tensor:
    """module.embed (a tokenizer) or module.features (an encoder) over the data -> (n N, dim)."""
    out = []
    for signal, _ in DataLoader(data, batch):
        x = preprocess(signal)
        out.append((module.embed(x) if hasattr(module, "embed") else module.features(x)).flatten(0, -2))
    return torch.cat(out)


def _load(stage_dir: Path, part: str, module: nn.Module) -> nn.Module:
    state = load_stage(stage_dir)
    if state is None or part not in state.weights:
        raise FileNotFoundError(f"no {part} in {stage_dir}")
    module.load_state_dict(state.weights[part])
    return module.eval()


def _row(name: str, level: int, s: LevelStats) -> str:
    return (
        f"| {name} | {level + 1} | {s.usage:.2f} | {s.perplexity:.0f} | {s.top8_share:.2f} "
        f"| {s.mean_share:.2f} | {s.effective_rank:.1f} | {s.mean_cosine:.2f} |"
    )


HEAD = [
    "| tokenizer / features | level | usage | perplexity | top-8 share | mean share | effective rank "
    "| mean cosine |",
    "|---|---|---|---|---|---|---|---|",
]


def diagnose_seed(seed_dir: Path, modality: str, budget_name: str, fsdd: Path) -> list[str]:
    """Tables for one seed folder of a run: held-out and training-data inputs."""
    budget = BUDGETS[budget_name]
    runs = seed_dir.parent
    probes = probe_data(modality, fsdd, runs, budget)
    lines = []
    iter1 = seed_dir / "iter1"
    config = ModelConfig.from_dict(json.loads((iter1 / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
    preprocess = build_preprocessor(config)
    teacher = _load(iter1 / PRETRAIN1, "encoder", Encoder(config))
    for label, data in (("held-out", probes.held_out), ("training data", probes.seen)):
        lines += ["", f"### {modality}, {seed_dir.name}, {label} inputs", "", *HEAD]
        feats = embed_all(teacher, preprocess, data, budget.probe.batch_size)
        s = level_stats(feats, torch.zeros(len(feats), dtype=torch.long), 1)
        lines.append(
            f"| iter1 E's patch features (the teacher) | - | - | - | - | {s.mean_share:.2f} "
            f"| {s.effective_rank:.1f} | {s.mean_cosine:.2f} |"
        )
        for arm in budget.arms:
            folder = seed_dir / arm.name
            state = load_stage(folder / TOKENIZER) if (folder / TOKENIZER).is_dir() else None
            if state is None or not state.done:
                continue
            cfg = ModelConfig.from_dict(json.loads((folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
            tokenizer = _load(folder / TOKENIZER, "tokenizer", Tokenizer(cfg))
            vectors = embed_all(tokenizer, preprocess, data, budget.probe.batch_size)
            for level, s in enumerate(residual_stats(vectors, tokenizer.quantizer.codebooks)):
                lines.append(_row(arm.name, level, s))
    return lines


# ---- a diagnosis run: the same distillation, with each way of normalising the teacher's features ----------


class CentredTargets(Distillation):
    """Distillation towards the teacher's features minus their mean over the batch's tokens (per feature):
    the first diagnosis, kept as the simplest contrast to `normalise_targets`'s instance norm."""

    def __init__(self, config: ModelConfig, teacher: Encoder) -> None:
        super().__init__(config, teacher, target_norm="none")

    @torch.no_grad()
    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        target = super().forward_teacher(x)  # (B, N, D_E)
        return target - target.mean(dim=(0, 1), keepdim=True)


TARGET_VARIANTS = {
    "teacher features as they are (none)": lambda c, t: Distillation(c, t, target_norm="none"),
    "batch-centred teacher features": CentredTargets,
    "instance-normalised teacher features (the default)": lambda c, t: Distillation(c, t, "instance"),
}


def distil(
    seed_dir: Path,
    variant: str,
    steps: int,
    batch: int,
    data: MediaDataset,
    held_out: MediaDataset,
    seed: int,
) -> tuple[list[list[float]], list[LevelStats]]:
    """Distil a tokenizer from the seed's iter1 encoder for `steps` -> usage per level every 10 steps
    (training batches) and the held-out per-level statistics."""
    iter1 = seed_dir / "iter1"
    config = ModelConfig.from_dict(json.loads((iter1 / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
    preprocess = build_preprocessor(config)
    torch.manual_seed(seed)
    teacher = _load(iter1 / PRETRAIN1, "encoder", Encoder(config))
    objective = TARGET_VARIANTS[variant](config, teacher)
    optimizer, scheduler = build_optimizer(objective.trainable(), 1e-3, 0.05, max(1, steps // 10), steps)
    loader = DataLoader(
        data, batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    curve, step = [], 0
    objective.train()
    while step < steps:
        for signal, _ in loader:
            loss, _ = objective(preprocess(signal))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 10 == 0:
                curve.append([u.usage_rate for u in objective.tokenizer.quantizer.usage()])
                objective.tokenizer.quantizer.reset_usage()
            if step == steps:
                break
    tokenizer = objective.tokenizer.eval()
    tokenizer.quantizer.freeze()
    vectors = embed_all(tokenizer, preprocess, held_out, batch)
    return curve, residual_stats(vectors, tokenizer.quantizer.codebooks)


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    run: Path = typer.Argument(..., help="a replication --out folder"),
    fsdd: Path = typer.Option(Path("../shared/data/fsdd"), help="folder of FSDD recordings"),
    modalities: list[str] = typer.Option(["audio", "image"], "--modality"),
    seed: int = typer.Option(0),
    budget_name: str = typer.Option("full", "--budget", help="the budget the run was trained with"),
    centred_steps: int = typer.Option(
        0, help="image: also distil with each target normalisation for this many steps"
    ),
) -> None:
    lines = [
        "# Code usage diagnosis",
        "",
        f"`python -m experiments.replication.diagnose {run}`; budget {budget_name}.",
    ]
    for modality in modalities:
        seed_dir = run / "runs" / modality / f"seed{seed}"
        if not seed_dir.is_dir():
            typer.echo(f"error: {seed_dir} is missing", err=True)
            raise typer.Exit(1)
        lines += diagnose_seed(seed_dir, modality, budget_name, fsdd)
    if centred_steps:
        for modality in modalities:
            seed_dir = run / "runs" / modality / f"seed{seed}"
            probes = probe_data(modality, fsdd, seed_dir.parent, BUDGETS[budget_name])
            if probes.test is None:  # audio: every FSDD clip is a probe clip, none is left to distil on
                continue
            lines += ["", f"### {modality}: distillation from iter1 for {centred_steps} steps, batch 16", ""]
            lines += [*HEAD[:1], *HEAD[1:]]
            curves = []
            for name in TARGET_VARIANTS:
                curve, stats = distil(seed_dir, name, centred_steps, 16, probes.train, probes.held_out, seed)
                curves.append((name, curve))
                lines += [_row(f"iter1's RQ config, {name}", level, s) for level, s in enumerate(stats)]
            lines += ["", "Usage per level on training batches, every 10 steps:", ""]
            for name, curve in curves:
                lines.append(f"- {name}: " + "; ".join("/".join(f"{u:.2f}" for u in row) for row in curve))
    text = "\n".join(lines) + "\n"
    (run / "diagnosis.md").write_text(text, encoding="utf-8")
    typer.echo(text)


if __name__ == "__main__":
    app()
