"""The interleaved BRIDLE stages: building each from the earlier ones, the loop, and checkpoints.

The objective of each stage kind is a step in bridle/model/bridle.py:
    pretrain    `Pretraining`: E + D predict the current tokenizer's codes at masked patches;
                the first pretrain stage uses a frozen RandomProjectionTokenizer (cold start)
    tokenizer   `Distillation`: E frozen as teacher, T + TE trained on L_cos + L_cb
    classifier  `Classification`: a head on E's pooled tokens, E frozen ("linear") or trained with it
                ("finetune"); evaluated on the test set at the end (metrics.json)

Each stage saves its networks in `out_dir/<stage>/checkpoint/` (every `checkpoint_every` steps and at the
end) and a servable checkpoint in `out_dir/servable/`. A stage takes E and T from the latest earlier stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from bridle.model.bridle import Classification, Distillation, Objective, Pretraining, quantizers
from bridle.model.checkpoint import Servable, save_servable
from bridle.model.config import AudioInput, ModelConfig
from bridle.model.encoder import Encoder
from bridle.model.errors import BridleError
from bridle.model.media_sets import UNLABELLED, Entry, decode_example
from bridle.model.preprocessing import build_preprocessor, fbank_stats
from bridle.model.quantizer import LevelUsage
from bridle.model.tokenizer import RandomProjectionTokenizer, Tokenizer
from bridle.model.windowing import audio_windows, clip_mean
from bridle.training.augment import build_augment
from bridle.training.data import ItemMaker, MediaDataset, dataset_entries, label_share
from bridle.training.distributed import DistInfo, barrier, wrap
from bridle.training.loader import loader_options, train_batches
from bridle.training.mixing import BatchMixer
from bridle.training.monitor import SeenLog, StageMonitor, Throughput
from bridle.training.optim import build_optimizer
from bridle.training.precision import PrecisionError, autocast, check_supported, compile_transformers
from bridle.training.recipe import DataSpec, Recipe, StageSpec, TrainSpec
from bridle.training.shards import ShardSet, ShardStream, is_sharded
from bridle.training.state import StageState, load_stage, save_stage, set_rng_state

log = logging.getLogger(__name__)
MODEL_CONFIG_FILE = "model_config.json"
SERVABLE_DIR = "servable"


class StageError(BridleError, RuntimeError):
    """A stage cannot run: an earlier stage is missing, or the data does not fit the stage."""


# ---- the run: resolved model config and data -------------------------------------------------------------


@dataclass
class RunContext:
    recipe: Recipe
    config: ModelConfig  # the recipe's model with the measured fbank statistics
    info: DistInfo
    out_dir: Path
    train_set: MediaDataset | ShardSet
    test_set: MediaDataset | None
    item_maker: ItemMaker  # how a decoded training example becomes an item (crop, augmentation)


def prepare_run(recipe: Recipe, info: DistInfo, reuse_config: bool) -> RunContext:
    """Load the data; measure the audio fbank mean/std on the training set (or reuse the stored config)."""
    out_dir = Path(recipe.out_dir)
    config = recipe.model_config()
    if config.modality != recipe.data.modality:
        raise StageError(f"model modality {config.modality!r} != data.modality {recipe.data.modality!r}")
    augment = build_augment(recipe.data.modality, recipe.data.augment, config)  # None when off
    # training items are random windows of longer examples where the modality cuts them (audio)
    item_maker = ItemMaker(config, True, augment, recipe.seed)
    train_source, test_source = data_sources(recipe.data)
    sharded = isinstance(train_source, str) and is_sharded(train_source)
    if sharded and recipe.data.cache:
        raise StageError(f"data.cache: {recipe.data.train} is sharded, and shards are streamed, not cached")
    cache = recipe.data.cache if recipe.data.cache is not None else not sharded
    train_set: MediaDataset | ShardSet
    if sharded:
        train_set = ShardSet.load(recipe.data.train)
        if train_set.modality != config.modality:
            raise StageError(
                f"{recipe.data.train} holds {train_set.modality} shards, the model takes {config.modality}"
            )
    else:
        train_set = MediaDataset(
            train_source,
            config,
            cache=cache,
            random_crop=True,
            augment=augment,
            augment_seed=recipe.seed,
        )
    test_set = None
    if test_source is not None:
        labels = train_set.labels or None
        test_set = MediaDataset(test_source, config, labels=labels, cache=cache)
    stored = out_dir / MODEL_CONFIG_FILE
    if reuse_config and stored.is_file():
        config = ModelConfig.from_dict(json.loads(stored.read_text(encoding="utf-8")))
    elif isinstance(config.input, AudioInput):
        config = _with_fbank_stats(config, train_set, recipe.data.fbank_stats_clips)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    barrier(info)
    return RunContext(recipe, config, info, out_dir, train_set, test_set, item_maker)


def data_sources(data: DataSpec) -> tuple[str | list[Entry], str | list[Entry] | None]:
    """The training and test sources of a recipe: its paths, or the entries of its benchmark set."""
    if data.dataset is None:
        assert data.train is not None  # the recipe's check: one of the two is set
        return data.train, data.test
    return dataset_entries(data.dataset)


def labelled_part(ctx: RunContext) -> MediaDataset | ShardSet:
    """What a classifier stage trains on: the recipe's `label_fraction` of the labelled training data."""
    fraction = ctx.recipe.data.label_fraction
    if fraction >= 1.0:
        return ctx.train_set
    if not isinstance(ctx.train_set, MediaDataset):
        raise StageError("data.label_fraction below 1 needs a file data set, not shards")
    return label_share(ctx.train_set, fraction, ctx.recipe.data.label_seed)


def _with_fbank_stats(config: ModelConfig, data: MediaDataset | ShardSet, clips: int) -> ModelConfig:
    assert isinstance(config.input, AudioInput)
    if isinstance(data, ShardSet):
        stream = ShardStream(
            data, min(clips, len(data)), 0, cfg=config, decode=decode_example, make_item=ItemMaker(config)
        )
        waves = next(iter(stream))[0]  # (n, window_samples): the first clips of a shuffled epoch
    else:
        waves = torch.stack([data[i][0] for i in range(min(clips, len(data)))])  # (n, window_samples)
    mean, std = fbank_stats(waves, config.input)
    log.info("fbank statistics of the training data: mean %.3f std %.3f", float(mean), float(std))
    return config.replace(input=dataclasses.replace(config.input, mean=float(mean), std=float(std)))


# ---- building a stage from the earlier ones --------------------------------------------------------------


def earlier_parts(ctx: RunContext, index: int) -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    """part -> (weights, tokenizer kind) from the latest finished earlier stage that has it."""
    found: dict[str, tuple[dict[str, torch.Tensor], str]] = {}
    for j in range(index - 1, -1, -1):
        name = ctx.recipe.stage_name(j)
        state = load_stage(ctx.out_dir / name)
        if state is None or not state.done:
            raise StageError(f"stage {j} ({name}) has not finished in {ctx.out_dir}: run it first")
        for part in ("encoder", "tokenizer"):
            if part in state.weights and part not in found:
                found[part] = (state.weights[part], state.tokenizer_kind)
    return found


def build_objective(ctx: RunContext, index: int, resume: StageState | None) -> Objective:
    spec, config = ctx.recipe.stages[index], ctx.config
    torch.manual_seed(ctx.recipe.seed + index)  # the same initial networks on every rank
    prior = earlier_parts(ctx, index)

    def encoder() -> Encoder:
        e = Encoder(config)
        if spec.encoder_init == "random":
            return e  # a classifier fine-tuned from fresh weights (seeded above)
        if "encoder" not in prior:
            raise StageError(
                f"stage {index} ({spec.kind}) needs an encoder from an earlier pretrain stage "
                "(or, for a fine-tuned classifier, encoder_init: random)"
            )
        e.load_state_dict(prior["encoder"][0])
        return e

    def tokenizer() -> tuple[nn.Module, str]:
        kind = resume.tokenizer_kind if resume else prior.get("tokenizer", (None, "random"))[1]
        t = RandomProjectionTokenizer(config) if kind == "random" else Tokenizer(config)
        if not resume and "tokenizer" in prior:
            t.load_state_dict(prior["tokenizer"][0])
        return t, kind

    objective: Objective
    if spec.kind == "pretrain":
        objective = Pretraining(config, *tokenizer())
        if "encoder" in prior and not resume:
            objective.encoder.load_state_dict(prior["encoder"][0])  # warm start from the latest encoder
    elif spec.kind == "tokenizer":
        objective = Distillation(config, encoder(), spec.target_norm)
    else:
        if not ctx.train_set.labels or _has_unlabelled(ctx.train_set):
            raise StageError(
                f"the classifier stage needs labelled training data; {ctx.recipe.name}'s training data has "
                "unlabelled files"
            )
        tok, kind = tokenizer()  # built before the encoder: the seeded order of the initial weights
        objective = Classification(config, encoder(), tok, kind, len(ctx.train_set.labels), spec.mode)
    if resume is not None:
        for name, module in objective.parts().items():
            module.load_state_dict(resume.weights[name])
    return objective.to(ctx.info.device)


def _has_unlabelled(data: MediaDataset | ShardSet) -> bool:
    return data.unlabelled > 0 if isinstance(data, ShardSet) else UNLABELLED in data.targets


# ---- the loop --------------------------------------------------------------------------------------------


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    precision: str,
    device: torch.device,
) -> dict[str, float]:
    """Forward and backward `count` micro-batches (x, y), each loss scaled by 1/count, so the summed
    gradients are those of the mean loss over one count-times batch (equal micro-batch sizes). Under DDP
    the gradients are all-reduced once, after the last. Returns each scalar's mean over the micro-batches.

    The quantizer's EMA (tokenizer stages) moves once per micro-batch, on that micro-batch's statistics.
    """
    sums: dict[str, float] = {}
    for j, (x, y) in enumerate(micro_batches):
        last = j == count - 1
        sync = (
            contextlib.nullcontext()
            if last or not isinstance(model, DistributedDataParallel)
            else model.no_sync()
        )
        with sync:
            with autocast(precision, device):
                loss, scalars = model(x, y)
            (loss / count).backward()
        for key, value in scalars.items():
            sums[key] = sums.get(key, 0.0) + value / count
    return sums


def level_usage(objective: Objective) -> list[LevelUsage]:
    """Code usage of the objective's tokenizer since the last call (pretrain and tokenizer stages)."""
    if isinstance(objective, Classification):
        return []
    usage = [u for q in quantizers(objective.tokenizer) for u in q.usage()]
    for q in quantizers(objective.tokenizer):
        q.reset_usage()
    return usage


@dataclass
class StageResult:
    summary: dict[str, Any]  # stage name, steps, seconds, test accuracy (classifier)
    objective: Objective | None  # the trained networks (None when the stage had finished earlier)


def run_stage(ctx: RunContext, index: int, resume: bool) -> StageResult:
    """Train stage `index` (continuing its last checkpoint when `resume`)."""
    name = ctx.recipe.stage_name(index)
    state = load_stage(ctx.out_dir / name) if resume else None
    if state is not None and state.done:
        log.info("stage %s finished earlier (step %d): skipped", name, state.step)
        return StageResult({"stage": name, "step": state.step, "skipped": True}, None)
    loop = StageLoop(ctx, index, state)
    step, stopped = loop.train()
    summary: dict[str, Any] = {"stage": name, "step": step, "seconds": time.perf_counter() - loop.tic}
    if stopped:
        summary["stopped"] = stopped
    if loop.classifying and ctx.test_set is not None:
        summary["accuracy"] = _test_accuracy(ctx, loop, step)
    if ctx.info.is_main:
        save_servable(ctx.out_dir / SERVABLE_DIR, servable_of(ctx, loop.objective, name, step))
    barrier(ctx.info)
    return StageResult(summary, loop.objective)


class StageLoop:
    """One stage's training: its networks, optimiser and data stream, the steps, the checkpoints.

    Built in this order (the order the random generators are drawn in): the objective (seeded by
    `build_objective`), the preprocessor, the wrapped model, the optimiser, then the resumed or seeded
    state, then the data stream.
    """

    def __init__(self, ctx: RunContext, index: int, state: StageState | None) -> None:
        recipe, info = ctx.recipe, ctx.info
        self.ctx, self.info, self.index = ctx, info, index
        self.spec: StageSpec = recipe.stages[index]
        self.name = recipe.stage_name(index)
        self.stage_dir = ctx.out_dir / self.name
        self.objective = build_objective(ctx, index, state)
        if info.is_main:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
        self.preprocess = build_preprocessor(ctx.config).to(info.device)
        self.model = _training_model(self.objective, recipe.train, info)
        self.optimizer, self.scheduler = build_optimizer(
            self.objective.trainable(),
            float(self.spec.lr),
            float(self.spec.weight_decay),
            self.spec.warmup_steps,
            self.spec.steps,
            fused=recipe.train.fused_optimizer,
        )
        self.accumulate = self.spec.accumulate or recipe.train.accumulate
        history = self._restore(state)
        self.batch_size = self.spec.batch_size or recipe.data.batch_size
        self.classifying = isinstance(self.objective, Classification)
        self._open_stream()
        self.monitor = StageMonitor(
            self.stage_dir, self.name, self.spec.steps, self.start, history, enabled=info.is_main
        )
        self.seen_log = SeenLog(self.stage_dir, info.rank, self.start) if recipe.data.record_seen else None
        self.meter = Throughput(info.world_size)
        self.tic = time.perf_counter()  # reset when the steps begin

    def _restore(self, state: StageState | None) -> dict[str, Any] | None:
        """Continue from the stage's checkpoint, or seed a fresh start. Returns the monitor's history."""
        self.start, self.position, self.elapsed = 0, 0, 0.0  # step, micro-batches consumed, seconds spent
        if state is None:
            _seed_everything(self.ctx.recipe.seed + 1000 * self.index + self.info.rank)
            return None
        self.optimizer.load_state_dict(state.extra["optimizer"])
        self.scheduler.load_state_dict(state.extra["scheduler"])
        set_rng_state(state.extra["rng"])
        self.start = state.step
        self.position = int(state.extra.get("data_position", self.start * self.accumulate))
        self.elapsed = float(state.extra.get("elapsed", 0.0))
        log.info(
            "stage %s resumes at step %d (micro-batch %d of its data stream)",
            self.name,
            self.start,
            self.position,
        )
        return state.extra.get("history")

    def _open_stream(self) -> None:
        """The stage's batch stream from its resumed position, and the mixer of a classifier's batches."""
        ctx, recipe, seed = self.ctx, self.ctx.recipe, self.ctx.recipe.seed + 1000 * self.index
        stage_data = labelled_part(ctx) if self.classifying else ctx.train_set
        self.mixer = BatchMixer(recipe.data.mix, len(ctx.train_set.labels), seed + self.start)
        self.data = train_batches(
            stage_data,
            self.batch_size,
            seed,
            self.info,
            recipe.data,
            start=self.position,
            stream_options={"cfg": ctx.config, "decode": decode_example, "make_item": ctx.item_maker},
        )

    def train(self) -> tuple[int, str | None]:
        """Step until the stage's last step or its time budget; the final checkpoint.
        Returns the last step and why it stopped early (None when it ran to the end)."""
        spec, info = self.spec, self.info
        self.model.train()
        self.tic = time.perf_counter()
        step, stopped = self.start, None
        while step < spec.steps:
            scalars = self._step(step + 1)
            step += 1
            spent = self.elapsed + time.perf_counter() - self.tic
            over = (
                spec.max_seconds is not None
                and step < spec.steps
                and _past_budget(spent, spec.max_seconds, info)
            )
            if step % spec.log_every == 0 or step == spec.steps or over:
                scalars |= {"lr": self.scheduler.get_last_lr()[0], **self.meter.window()}
                self.monitor.log(step, scalars, level_usage(self.objective))
            self.monitor.advance()
            if over:
                stopped = f"time budget of {spec.max_seconds:g} s"
                log.info("stage %s stops at step %d of %d: %s", self.name, step, spec.steps, stopped)
                break
            if step % self.ctx.recipe.checkpoint_every == 0 and step < spec.steps:
                self.checkpoint(step, done=False)
        self.checkpoint(step, done=True)
        self.monitor.close(plot=True)
        if self.seen_log is not None:
            self.seen_log.close()
        return step, stopped

    def _step(self, step: int) -> dict[str, float]:
        """One optimiser step over `accumulate` micro-batches; records the examples it used."""
        ids: list[str] = []
        self.optimizer.zero_grad(set_to_none=True)
        precision = self.ctx.recipe.train.precision
        scalars = accumulate_gradients(
            self.model, self._micro_batches(ids), self.accumulate, precision, self.info.device
        )
        self.optimizer.step()
        self.scheduler.step()
        if self.seen_log is not None:
            self.seen_log.write(step, ids)
        return scalars

    def _micro_batches(self, ids: list[str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The next `accumulate` micro-batches (x, y) on the device; their example ids go to `ids`."""
        device, mixing = self.info.device, self.classifying and self.ctx.recipe.data.mix.p > 0
        for _ in range(self.accumulate):
            with self.meter.waiting():
                batch = next(self.data)
            self.position += 1
            ids.extend(batch.ids)
            self.meter.count(len(batch.ids))
            with torch.no_grad():
                x = self.preprocess(batch.signal.to(device, non_blocking=True))
            y = batch.label.to(device, non_blocking=True)
            if mixing:
                x, y = self.mixer(x, y)  # y: (B, C) blended one-hot targets
            yield x, y

    def checkpoint(self, step: int, done: bool) -> None:
        """Save the networks and what resuming needs (the main process); every rank waits for it."""
        if self.info.is_main:
            extra = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.monitor.history,
                "data_position": self.position,  # micro-batches of this rank's stream (all ranks equal)
                "elapsed": self.elapsed + time.perf_counter() - self.tic,
            }
            parts, kind = self.objective.parts(), self.objective.tokenizer_kind
            save_stage(self.stage_dir, parts, self.ctx.config, kind, step, self.spec.steps, done, extra)
        barrier(self.info)


def _training_model(objective: Objective, train: TrainSpec, info: DistInfo) -> nn.Module:
    """The objective as it trains: precision checked, transformers compiled when asked, DDP-wrapped."""
    try:
        check_supported(train, info.device)
    except PrecisionError as e:
        raise StageError(str(e)) from e
    if train.compile:
        compile_transformers(objective)
    return wrap(objective, info)


def _test_accuracy(ctx: RunContext, loop: StageLoop, step: int) -> float:
    """The trained classifier's accuracy on the test set; the main process writes it to metrics.json."""
    assert ctx.test_set is not None and isinstance(loop.objective, Classification)
    info, test_set = ctx.info, ctx.test_set
    accuracy = evaluate(loop.objective, loop.preprocess, test_set, loop.batch_size, info, ctx.recipe.data)
    if info.is_main:
        metrics = {
            "accuracy": accuracy,
            "test_examples": len(test_set),
            "labels": ctx.train_set.labels,
            "step": step,
        }
        (loop.stage_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return accuracy


@torch.no_grad()
def evaluate(
    objective: Classification,
    preprocess: nn.Module,
    data: MediaDataset,
    batch: int,
    info: DistInfo,
    spec: DataSpec | None = None,
) -> float:
    """Top-1 accuracy of the classifier on `data` (decoded in `spec`'s workers when given). Audio is scored
    per clip as the service scores it: every window of the clip (bridle/model/windowing.py), the windows'
    class probabilities averaged by the seconds of signal each covers."""
    objective.eval()
    if isinstance(data.cfg.input, AudioInput) and data.cached:
        return _clip_accuracy(objective, preprocess, data, batch, info)
    correct = 0
    options = loader_options(spec, info) if spec is not None else {}
    for signal, label in DataLoader(data, batch, **options):
        logits = objective.logits(preprocess(signal.to(info.device)))
        correct += int((logits.argmax(-1).cpu() == label).sum())
    return correct / len(data)


def _clip_accuracy(
    objective: Classification, preprocess: nn.Module, data: MediaDataset, batch: int, info: DistInfo
) -> float:
    cfg = data.cfg.input
    assert isinstance(cfg, AudioInput)
    clips = [audio_windows(wave, cfg.window_samples, cfg.sample_rate) for wave in data.arrays()]
    windows = torch.from_numpy(np.concatenate([w for w, _ in clips]))  # (all windows, window_samples)
    probs = torch.cat(
        [
            objective.logits(preprocess(part.to(info.device))).softmax(-1).cpu()
            for part in windows.split(batch)
        ]
    ).numpy()  # (all windows, C)
    correct, first = 0, 0
    for (w, spans), target in zip(clips, data.targets, strict=True):
        correct += int(clip_mean(probs[first : first + len(w)], spans).argmax() == target)
        first += len(w)
    return correct / len(data)


def servable_of(ctx: RunContext, objective: Objective, stage: str, step: int) -> Servable:
    parts = objective.parts()
    classifier = parts.get("classifier")
    provenance = {
        "recipe": ctx.recipe.source or ctx.recipe.name,
        "stage": stage,
        "step": step,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return Servable(
        config=ctx.config,
        encoder=parts["encoder"],
        tokenizer=parts["tokenizer"],
        classifier=classifier,
        labels=list(ctx.train_set.labels) if classifier is not None else [],
        tokenizer_kind=objective.tokenizer_kind,  # type: ignore[arg-type]
        provenance=provenance,
    )


def _past_budget(seconds: float, budget: float, info: DistInfo) -> bool:
    """Whether the stage's time budget is spent; rank 0's clock decides for all ranks."""
    if not info.enabled:
        return seconds >= budget
    flag = torch.tensor([float(seconds >= budget)], device=info.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
