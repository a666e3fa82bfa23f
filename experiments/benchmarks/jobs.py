"""The benchmark's jobs, each run in a worker process: pretraining, one fine-tuning run, one features fit.

Folders (under `runs`, default runs/benchmarks):
    <dataset>/<part>/pretrain/                  the recipe's pretraining stages on the part's training data
    <dataset>/<part>/<arm>-<labels>-s<seed>-lr<lr>/
                                                its stages linked to pretrain/'s, then the classifier stage
Every stage resumes from its last checkpoint, so an interrupted benchmark continues where it stopped.
A worker keeps the decoded data sets of the parts it has seen, so later jobs of a part skip decoding.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from bridle.model.config import AudioInput, ModelConfig
from bridle.model.preprocessing import build_preprocessor
from bridle.model.windowing import audio_windows
from bridle.training.data import ItemMaker, MediaDataset, label_share
from bridle.training.distributed import DistInfo
from bridle.training.recipe import Recipe, apply_override, recipe_from_dict
from bridle.training.stages import MODEL_CONFIG_FILE, RunContext, prepare_run, run_stage
from experiments.benchmarks.plan import BENCHMARKS, Benchmark, Part

PRETRAIN = "pretrain"
PIXEL_COMPONENTS = 256  # the features baseline's PCA of the pixels


@dataclass(frozen=True)
class Setup:
    """Where the data and runs are, and what a shortened run (tests) changes in the bundled recipe."""

    root: str  # the data set's folder
    runs: str  # runs/benchmarks
    overrides: tuple[str, ...] = ()  # dotted key=value recipe overrides (bridle/training/recipe.py)
    finetune_steps: int | None = None  # replaces the plan's steps per label fraction


_DATA: dict[tuple[str, str], tuple[MediaDataset, MediaDataset]] = {}  # (dataset, part) -> decoded sets


def set_threads(threads: int) -> None:
    """A worker's initialiser: its torch intra-op threads (the jobs run side by side)."""
    torch.set_num_threads(threads)


def part_of(bench: Benchmark, name: str) -> Part:
    return next(p for p in bench.parts if p.name == name)


def part_dir(runs: Path, bench: Benchmark, part: Part) -> Path:
    return runs / bench.dataset / part.name.replace(">", "")


def run_name(arm: str, labels: float, seed: int, lr: float) -> str:
    return f"{arm}-{labels:g}-s{seed}-lr{lr:g}"


def part_recipe(bench: Benchmark, part: Part, setup: Setup, out: Path, pretrain_only: bool) -> dict[str, Any]:
    """The bundled recipe as a dict, on the part's data (and only its pretraining stages if asked)."""
    raw = yaml.safe_load(Path(bench.recipe).read_text(encoding="utf-8"))
    for item in setup.overrides:
        apply_override(raw, item)
    raw["data"]["dataset"] = {**raw["data"]["dataset"], **part.dataset_overrides, "root": setup.root}
    raw["out_dir"] = str(out)
    raw["source"] = bench.recipe
    if pretrain_only:
        raw["stages"] = [s for s in raw["stages"] if s["kind"] != "classifier"]
    return raw


# ---- pretraining ------------------------------------------------------------------------------------------


def pretrain(dataset: str, part_name: str, setup: Setup) -> dict[str, Any]:
    """The recipe's pretraining stages on the part's training data; returns the stages' seconds."""
    bench = BENCHMARKS[dataset]
    part = part_of(bench, part_name)
    out = part_dir(Path(setup.runs), bench, part) / PRETRAIN
    recipe = recipe_from_dict(part_recipe(bench, part, setup, out, pretrain_only=True))
    ctx = prepare_run(recipe, DistInfo(), reuse_config=(out / MODEL_CONFIG_FILE).is_file())
    seconds = {}
    for index in range(len(recipe.stages)):
        summary = run_stage(ctx, index, resume=True).summary
        seconds[summary["stage"]] = summary.get("seconds")
    return {"dataset": dataset, "split": part.name, "stages": seconds}


# ---- fine-tuning -------------------------------------------------------------------------------------------


def finetune(
    dataset: str, part_name: str, arm: str, labels: float, seed: int, lr: float, setup: Setup
) -> dict[str, Any]:
    """Fine-tune the classifier stage from the pretrained E (`bridle`) or a fresh one (`random-init`) on
    `labels` of the part's labelled training data; the result row with the test part's accuracy."""
    bench = BENCHMARKS[dataset]
    part = part_of(bench, part_name)
    base = part_dir(Path(setup.runs), bench, part)
    out = base / run_name(arm, labels, seed, lr)
    raw = part_recipe(bench, part, setup, out, pretrain_only=False)
    raw["seed"] = seed
    raw["data"] = {**raw["data"], "label_fraction": labels, "label_seed": seed}
    index = next(i for i, s in enumerate(raw["stages"]) if s["kind"] == "classifier")
    steps = setup.finetune_steps or bench.steps[labels]
    raw["stages"][index] = {
        **raw["stages"][index],
        "steps": steps,
        "lr": lr,
        "warmup_steps": max(1, steps // 10),
        "encoder_init": "random" if arm == "random-init" else "pretrained",
    }
    recipe = recipe_from_dict(raw)
    _link_pretraining(base / PRETRAIN, out, [recipe.stage_name(i) for i in range(index)])
    tic = time.perf_counter()
    summary = run_stage(_context(recipe, (dataset, part.name)), index, resume=True).summary
    accuracy = summary.get("accuracy")
    if accuracy is None:  # finished by an earlier run of the benchmark
        metrics = out / recipe.stage_name(index) / "metrics.json"
        accuracy = json.loads(metrics.read_text(encoding="utf-8"))["accuracy"]
    return {
        "dataset": dataset,
        "arm": arm,
        "labels": labels,
        "seed": seed,
        "accuracy": float(accuracy),
        "split": part.name,
        "lr": lr,
        "steps": steps,
        "seconds": round(time.perf_counter() - tic, 1),
    }


def _link_pretraining(pretrained: Path, out: Path, stages: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in stages:
        link = out / name
        if not link.exists():
            link.symlink_to((pretrained / name).resolve(), target_is_directory=True)
    if not (out / MODEL_CONFIG_FILE).is_file():
        shutil.copyfile(pretrained / MODEL_CONFIG_FILE, out / MODEL_CONFIG_FILE)


def _context(recipe: Recipe, key: tuple[str, str]) -> RunContext:
    """prepare_run, with the part's decoded data sets kept for the worker's later jobs (re-seeded)."""
    if key not in _DATA:
        ctx = prepare_run(recipe, DistInfo(), reuse_config=True)
        assert isinstance(ctx.train_set, MediaDataset) and ctx.test_set is not None
        _DATA[key] = (ctx.train_set, ctx.test_set)
        return ctx
    train, test = _DATA[key]
    out = Path(recipe.out_dir)
    config = ModelConfig.from_dict(json.loads((out / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
    item_maker = ItemMaker(train.cfg, train.cfg.modality == "audio", train.augment, recipe.seed)
    train = copy.copy(train)
    train.item_maker, train.augment_seed = item_maker, recipe.seed
    return RunContext(recipe, config, DistInfo(), out, train, test, item_maker)


# ---- the features baseline ---------------------------------------------------------------------------------


def features(dataset: str, part_name: str, labels: float, seed: int, setup: Setup) -> dict[str, Any]:
    """Logistic regression on raw features of `labels` of the training data: audio, the per-mel-bin mean
    and standard deviation of the clip's normalised log-mel fbank over all its windows (a clip shorter
    than a window repeated to fill it, so that no padding enters the statistics); images, the normalised
    pixels projected on their first 256 principal components (fitted on the same labelled images; a
    logistic regression on all 3,072 pixels of 45,000 images takes tens of minutes on one core)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bench = BENCHMARKS[dataset]
    part = part_of(bench, part_name)
    out = part_dir(Path(setup.runs), bench, part) / PRETRAIN  # its model config holds the fbank statistics
    raw = part_recipe(bench, part, setup, out, pretrain_only=True)
    ctx = _context(recipe_from_dict(raw), (dataset, part.name))
    preprocess = build_preprocessor(ctx.config)
    train = label_share(ctx.train_set, labels, seed)
    assert isinstance(train, MediaDataset) and ctx.test_set is not None
    tic = time.perf_counter()
    x, y = raw_features(train, preprocess), np.array(train.targets)
    x_test, y_test = raw_features(ctx.test_set, preprocess), np.array(ctx.test_set.targets)
    steps: list[Any] = [StandardScaler()]
    if ctx.config.modality == "image":
        steps.append(PCA(min(PIXEL_COMPONENTS, len(x) - 1), random_state=seed))
    model = make_pipeline(*steps, LogisticRegression(C=1.0, max_iter=1000, random_state=seed))
    accuracy = float(model.fit(x, y).score(x_test, y_test))
    return {
        "dataset": dataset,
        "arm": "features",
        "labels": labels,
        "seed": seed,
        "accuracy": accuracy,
        "split": part.name,
        "seconds": round(time.perf_counter() - tic, 1),
    }


@torch.no_grad()
def raw_features(data: MediaDataset, preprocess: nn.Module) -> np.ndarray:
    """(n, F) raw features of every example of `data` (see `features`)."""
    if isinstance(data.cfg.input, AudioInput):
        window, rate = data.cfg.input.window_samples, data.cfg.input.sample_rate
        rows = []
        for wave in data.arrays():
            windows, _ = audio_windows(np.resize(wave, max(len(wave), window)), window, rate)
            fbank = preprocess(torch.from_numpy(windows))  # (W, 1, mel, frames)
            frames = fbank[:, 0].permute(1, 0, 2).flatten(1)  # (mel, W * frames)
            rows.append(torch.cat([frames.mean(1), frames.std(1)]).numpy())
        return np.stack(rows)
    pixels = torch.from_numpy(np.stack(data.arrays()))  # (n, 3, S, S) uint8
    return torch.cat([preprocess(p).flatten(1) for p in pixels.split(1024)]).numpy()


# ---- the diagnosis: frozen encoders probed -----------------------------------------------------------------


def probe(dataset: str, part_name: str, setup: Setup) -> list[dict[str, Any]]:
    """Logistic regression on the frozen pooled features of the pretrained E and of the same E at its
    random initialisation, all labelled training data of the part, scored on its test part: what pretraining
    put into E before any fine-tuning (audio: each clip's windows' features averaged)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bridle.model.encoder import Encoder
    from bridle.training.state import load_stage

    bench = BENCHMARKS[dataset]
    part = part_of(bench, part_name)
    out = part_dir(Path(setup.runs), bench, part) / PRETRAIN
    ctx = _context(
        recipe_from_dict(part_recipe(bench, part, setup, out, pretrain_only=True)), (dataset, part.name)
    )
    preprocess = build_preprocessor(ctx.config)
    last = ctx.recipe.stage_name(len(ctx.recipe.stages) - 1)
    state = load_stage(out / last)
    assert state is not None and ctx.test_set is not None
    torch.manual_seed(ctx.recipe.seed)
    encoders = {"random-init": Encoder(ctx.config), "bridle": Encoder(ctx.config)}
    encoders["bridle"].load_state_dict(state.weights["encoder"])
    rows = []
    for arm, encoder in encoders.items():
        encoder.eval()
        x, x_test = (
            pooled_features(ctx.train_set, preprocess, encoder),
            pooled_features(ctx.test_set, preprocess, encoder),
        )
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        accuracy = float(model.fit(x, ctx.train_set.targets).score(x_test, ctx.test_set.targets))
        rows.append(
            {
                "dataset": dataset,
                "arm": arm,
                "probe": "frozen E, logistic regression",
                "labels": 1.0,
                "seed": 0,
                "accuracy": accuracy,
                "split": part.name,
                "encoder_from": last,
            }
        )
    return rows


@torch.no_grad()
def pooled_features(data: MediaDataset, preprocess: nn.Module, encoder: nn.Module) -> np.ndarray:
    """(n, D): E's pooled features of every example (audio: the mean over the clip's windows)."""
    if isinstance(data.cfg.input, AudioInput):
        window, rate = data.cfg.input.window_samples, data.cfg.input.sample_rate
        return np.stack(
            [
                encoder.pooled(preprocess(torch.from_numpy(audio_windows(w, window, rate)[0])))
                .mean(0)
                .numpy()
                for w in data.arrays()
            ]
        )
    pixels = torch.from_numpy(np.stack(data.arrays()))  # (n, 3, S, S) uint8
    return torch.cat([encoder.pooled(preprocess(p)) for p in pixels.split(512)]).numpy()
