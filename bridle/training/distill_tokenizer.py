"""`bridle-train tokenizer`: a BRIDLE tokenizer T (+ its estimator TE) distilled from any servable's encoder.

The servable's encoder (BRIDLE's `Encoder`, an imported `BeatsEncoder`, or any module with `features(x) -> (B,
N, D)`) is the frozen teacher. T and TE are trained by the project's own tokenizer objective,
`bridle.model.bridle.Distillation` (instance-normalised targets, L_cos + L_cb, EMA codebooks, k-means init on
the first batch, dead-code restarts: the same step the `tokenizer` stage of a recipe runs), with the recipe
stages' optimiser (`bridle.training.optim`). The result is a new servable checkpoint: the encoder and
classifier copied unchanged, the tokenizer the trained L x K residual quantizer (tokenizer_kind "trained"), so
`bridle-export` and the service's `/tokenize` serve its codes.

Data: the media files of the servable's modality under FOLDER (recursive), decoded by
`bridle.model.decoding` and cut into every window the service would cut (`bridle.model.windowing`), with
the servable's input config. Split, by file: the sorted file list is permuted by
`numpy.random.default_rng(seed)` and the first `round(held_out * files)` (at least one) are held out; the
rest train T. The teacher is frozen and sees no augmentation, so its features of the training windows are
computed once (in memory: windows x N x D floats) and fed to `Distillation.forward(x, target=...)`.

Reported (printed, and written as `tokenizer_report.json` in the new checkpoint): per level, on the held-out
windows, the code usage rate (used codes / K), the usage entropy and perplexity, and L_cos. One seed gives
the same tokenizer and codes on every run (same machine, same thread count).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bridle.model.atomic import atomic_write_bytes
from bridle.model.bridle import TARGET_NORMS, Distillation
from bridle.model.checkpoint import Servable, load_servable, save_servable
from bridle.model.config import AudioInput, ImageInput, ModelConfig, VideoInput, ViTConfig
from bridle.model.decoding import MediaError, decode_audio, decode_image, decode_video
from bridle.model.media_sets import media_files
from bridle.model.modalities import spec_for
from bridle.model.preprocessing import build_preprocessor
from bridle.model.windowing import audio_windows, video_windows
from bridle.training.optim import build_optimizer

log = logging.getLogger(__name__)
REPORT_FILE = "tokenizer_report.json"
SPLIT_RULE = "sorted files permuted by numpy.random.default_rng(seed); the first round(held_out * n) held out"


class DistillError(ValueError):
    """The tokenizer cannot be distilled: bad settings, no usable media, or a servable without an encoder."""


@dataclass(frozen=True)
class DistillSettings:
    """What `bridle-train tokenizer` trains; None = the servable's own value."""

    levels: int
    codebook_size: int
    steps: int = 500
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    held_out: float = 0.1  # share of the files held out for the usage report
    target_norm: str = "instance"
    code_dim: int | None = None
    dead_code_steps: int | None = None
    tokenizer_dim: int | None = None
    tokenizer_depth: int | None = None
    tokenizer_heads: int | None = None
    estimator_depth: int | None = None
    device: str = "cpu"

    def check(self) -> None:
        """Raise DistillError naming every bad value."""
        problems = []
        if self.levels < 1:
            problems.append(f"--levels must be >= 1, got {self.levels}")
        if self.codebook_size < 2:
            problems.append(f"--codebook-size must be >= 2, got {self.codebook_size}")
        if self.steps < 1:
            problems.append(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.held_out < 1.0:
            problems.append(f"--held-out must be in (0, 1), got {self.held_out}")
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.target_norm not in TARGET_NORMS:
            problems.append(f"--target-norm must be one of {TARGET_NORMS}, got {self.target_norm!r}")
        for name in ("code_dim", "tokenizer_dim", "tokenizer_depth", "tokenizer_heads", "estimator_depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.dead_code_steps is not None and self.dead_code_steps < 0:
            problems.append(f"--dead-code-steps must be >= 0, got {self.dead_code_steps}")
        if problems:
            raise DistillError("; ".join(problems))


@dataclass(frozen=True)
class Split:
    train: list[Path]
    held_out: list[Path]


# ---- data ------------------------------------------------------------------------------------------------


def split_files(folder: Path, modality: str, held_out: float, seed: int) -> Split:
    """The media files under `folder`, split by a seeded permutation (module docstring)."""
    if not folder.is_dir():
        raise DistillError(f"--data {str(folder)!r} is not a folder")
    files = media_files(folder, modality)
    if len(files) < 2:
        suffixes = " ".join(sorted(spec_for(modality).suffixes))
        raise DistillError(
            f"--data {str(folder)!r} holds {len(files)} {modality} files ({suffixes}); at least 2 are "
            "needed (some train, some are held out)"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    n_held = min(len(files) - 1, max(1, round(held_out * len(files))))
    return Split(train=[files[i] for i in order[n_held:]], held_out=[files[i] for i in order[:n_held]])


def file_windows(path: Path, cfg: ModelConfig) -> np.ndarray:
    """Every window the service cuts from the file -> (W, *signal) (audio float32, image/video uint8)."""
    inp = cfg.input
    if isinstance(inp, AudioInput):
        return audio_windows(decode_audio(path, inp.sample_rate), inp.window_samples, inp.sample_rate)[0]
    if isinstance(inp, ImageInput):
        return decode_image(path, inp.image_size)[None]  # (1, 3, S, S)
    if isinstance(inp, VideoInput):
        video = decode_video(path, inp.image_size)
        return video_windows(video, inp.num_frames, inp.clip_seconds)[0]  # (W, T, 3, S, S)
    raise DistillError(f"tokenizer distillation does not cut {cfg.modality} files into windows")


def load_windows(files: list[Path], cfg: ModelConfig, desc: str) -> tuple[torch.Tensor, list[str]]:
    """The windows of all `files` stacked -> (W, *signal), and the files that could not be decoded."""
    windows, skipped = [], []
    for path in tqdm(files, desc=desc, unit="file", leave=False):
        try:
            windows.append(file_windows(path, cfg))
        except (MediaError, OSError) as e:
            log.warning("skipping %s: %s", path, e)
            skipped.append(str(path))
    if not windows:
        raise DistillError(f"none of the {len(files)} {desc} files could be decoded")
    return torch.from_numpy(np.concatenate(windows)), skipped


# ---- the model -------------------------------------------------------------------------------------------


def tokenizer_config(cfg: ModelConfig, s: DistillSettings) -> ModelConfig:
    """The servable's config with T, TE and the RQ of the settings (and no imported BEATs tokenizer)."""
    vit = cfg.tokenizer
    tok = ViTConfig(
        dim=s.tokenizer_dim or vit.dim,
        depth=s.tokenizer_depth or vit.depth,
        heads=s.tokenizer_heads or vit.heads,
        mlp_ratio=vit.mlp_ratio,
    )
    if tok.dim % tok.heads:
        raise DistillError(f"the tokenizer's dim {tok.dim} is not divisible by its heads {tok.heads}")
    q = cfg.quantizer
    quantizer = dataclasses.replace(
        q,
        levels=s.levels,
        codebook_size=s.codebook_size,
        dim=s.code_dim or q.dim,
        init="kmeans",
        dead_code_steps=q.dead_code_steps if s.dead_code_steps is None else s.dead_code_steps,
    )
    estimator = dataclasses.replace(cfg.estimator, depth=s.estimator_depth or cfg.estimator.depth)
    beats = dataclasses.replace(cfg.beats, tokenizer=None) if cfg.beats is not None else None
    return cfg.replace(tokenizer=tok, quantizer=quantizer, estimator=estimator, beats=beats)


def check_teacher(servable: Servable) -> None:
    encoder = servable.encoder
    if encoder is None or not callable(getattr(encoder, "features", None)):
        raise DistillError("the servable has no encoder with features(x) -> (B, N, D) to distil from")


# ---- training and the held-out report -------------------------------------------------------------------


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def teacher_targets(
    objective: Distillation, preprocess: torch.nn.Module, windows: torch.Tensor, s: DistillSettings
) -> torch.Tensor:
    """The frozen teacher's normalised features of every window -> (W, N, D), on the CPU."""
    out = []
    for part in tqdm(
        _batches(len(windows), s.batch_size), desc="teacher features", unit="batch", leave=False
    ):
        out.append(objective.forward_teacher(preprocess(windows[part].to(s.device))).cpu())
    return torch.cat(out)


def train(
    objective: Distillation,
    preprocess: torch.nn.Module,
    windows: torch.Tensor,
    targets: torch.Tensor,
    s: DistillSettings,
) -> dict[str, float]:
    """`s.steps` steps of L_cos + L_cb on seeded shuffled batches; the last step's scalars."""
    optimizer, scheduler = build_optimizer(
        objective.trainable(), s.lr, s.weight_decay, min(s.warmup_steps, s.steps), s.steps
    )
    rng = np.random.default_rng(s.seed)
    batch = min(s.batch_size, len(windows))
    order: list[int] = []
    scalars: dict[str, float] = {}
    objective.train()
    bar = tqdm(range(s.steps), desc="distilling T", unit="step")
    for _ in bar:
        if len(order) < batch:
            order += rng.permutation(len(windows)).tolist()
        idx, order = torch.tensor(order[:batch]), order[batch:]
        with torch.no_grad():
            x = preprocess(windows[idx].to(s.device))
        loss, scalars = objective(x, target=targets[idx].to(s.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss_cos=f"{scalars['loss_cos']:.4f}", loss_cb=f"{scalars['loss_cb']:.4f}")
    return scalars


@torch.no_grad()
def held_out_report(
    objective: Distillation, preprocess: torch.nn.Module, windows: torch.Tensor, s: DistillSettings
) -> dict[str, Any]:
    """Per-level code usage and perplexity, and L_cos, of T on the held-out windows."""
    objective.eval()
    quantizer = objective.tokenizer.quantizer
    quantizer.reset_usage()
    cos_sum = 0.0
    for part in tqdm(_batches(len(windows), s.batch_size), desc="held-out codes", unit="batch", leave=False):
        _, scalars = objective(preprocess(windows[part].to(s.device)))
        cos_sum += scalars["loss_cos"] * (part.stop - part.start)
    levels = [{"level": i + 1, **dataclasses.asdict(u)} for i, u in enumerate(quantizer.usage())]
    quantizer.reset_usage()
    return {"windows": len(windows), "loss_cos": cos_sum / len(windows), "levels": levels}


def distill_tokenizer(source: Path, data: Path, s: DistillSettings) -> tuple[Servable, dict[str, Any]]:
    """Train T + TE from `source`'s encoder on `data`'s files -> the new servable and its report."""
    s.check()
    tic = time.perf_counter()
    servable = load_servable(source)
    check_teacher(servable)
    cfg = tokenizer_config(servable.config, s)
    split = split_files(data, cfg.modality, s.held_out, s.seed)
    train_windows, train_skipped = load_windows(split.train, cfg, "training")
    held_windows, held_skipped = load_windows(split.held_out, cfg, "held-out")

    torch.manual_seed(s.seed)  # T and TE's initial weights; k-means and restarts draw from it too
    objective = Distillation(cfg, servable.encoder, s.target_norm).to(s.device)  # type: ignore[arg-type]
    preprocess = build_preprocessor(cfg).to(s.device)
    targets = teacher_targets(objective, preprocess, train_windows, s)  # (W, N, D)
    if targets.shape[1:] != (cfg.num_patches, cfg.encoder.dim):
        raise DistillError(
            f"the encoder's features are {tuple(targets.shape[1:])} (N, D) per window, its config says "
            f"{(cfg.num_patches, cfg.encoder.dim)}: TE cannot predict them"
        )
    last = train(objective, preprocess, train_windows, targets, s)
    held = held_out_report(objective, preprocess, held_windows, s)

    settings = {k: v for k, v in dataclasses.asdict(s).items() if k != "device"}
    tokenizer_provenance = {
        "distilled_from": str(Path(source).resolve()),
        "data": str(Path(data).resolve()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **settings,
    }
    trained = Servable(
        config=cfg,
        encoder=servable.encoder,
        tokenizer=objective.tokenizer.cpu(),
        classifier=servable.classifier,
        labels=list(servable.labels),
        tokenizer_kind="trained",
        provenance={**servable.provenance, "tokenizer": tokenizer_provenance},
    )
    objective.encoder.cpu()
    report = {
        "servable": str(source),
        "data": str(data),
        "settings": settings,
        "split": {
            "how": SPLIT_RULE,
            "train_files": len(split.train),
            "held_out_files": [os.path.relpath(p, data) for p in split.held_out],
            "train_windows": len(train_windows),
            "skipped": train_skipped + held_skipped,
        },
        "last_step": last,
        "held_out": held,
        "seconds": round(time.perf_counter() - tic, 1),
    }
    return trained.eval(), report


def write_result(out: Path, servable: Servable, report: dict[str, Any]) -> Path:
    """The servable checkpoint (atomically), then its report beside the weights -> the report's path."""
    save_servable(out, servable)
    return atomic_write_bytes(out / REPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())


def usage_table(report: dict[str, Any]) -> str:
    """The held-out usage as lines of text."""
    held = report["held_out"]
    files = len(report["split"]["held_out_files"])
    lines = [f"held-out: {files} files, {held['windows']} windows, L_cos {held['loss_cos']:.4f}"]
    k = report["settings"]["codebook_size"]
    for lv in held["levels"]:
        lines.append(
            f"  level {lv['level']}: usage {lv['usage_rate']:.3f} ({round(lv['usage_rate'] * k)}/{k} codes), "
            f"perplexity {lv['perplexity']:.1f}, entropy {lv['entropy_bits']:.2f} bits"
        )
    return "\n".join(lines)
