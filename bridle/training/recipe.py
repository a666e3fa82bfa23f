"""A training recipe: one YAML file naming the model, the data and the ordered stages.

    name: audio-digits
    seed: 0
    out_dir: runs/audio-digits
    checkpoint_every: 100
    model: {preset: tiny-audio, overrides: {mask_ratio: 0.75}}
    data: {train: data/audio-digits/train, test: data/audio-digits/test, modality: audio, batch_size: 32}
    stages:
      - {kind: pretrain, steps: 300, lr: 1.0e-3, warmup_steps: 30}
      - {kind: tokenizer, steps: 200, lr: 1.0e-3}
      - {kind: classifier, mode: linear, steps: 200, lr: 3.0e-3}

Command-line overrides are dotted `key=value` pairs (`stages.0.steps=50 model.overrides.mask_ratio=0.75`;
`model.mask_ratio=0.75` is read as a model override); values are parsed as YAML. Unknown keys are errors.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bridle.model.bridle import TARGET_NORMS
from bridle.model.config import Modality, ModelConfig, Precision, preset
from bridle.model.errors import BridleError
from bridle.model.modalities import modality_choices, modality_names
from bridle.training.augment import AugmentError, augment_settings

StageKind = Literal["pretrain", "tokenizer", "classifier"]
STAGE_KINDS: tuple[str, ...] = ("pretrain", "tokenizer", "classifier")
CLASSIFIER_MODES: tuple[str, ...] = ("linear", "finetune")
ENCODER_INITS: tuple[str, ...] = ("pretrained", "random")


class RecipeError(BridleError, ValueError):
    """A recipe file or override is malformed."""


@dataclass(frozen=True)
class ModelSpec:
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)


DATASETS: tuple[str, ...] = ("urbansound8k", "cifar10")


@dataclass(frozen=True)
class DatasetSpec:
    """A public benchmark set read in the layout its users download (bridle/model/datasets.py), instead of
    `data.train` / `data.test` paths. UrbanSound8K parts are folds, CIFAR-10 parts named splits."""

    name: str  # one of DATASETS
    root: str
    train_folds: tuple[int, ...] = ()  # urbansound8k
    test_folds: tuple[int, ...] = ()  # urbansound8k; () = no test set
    train_split: str = "train"  # cifar10: train | val | train-all | test
    test_split: str | None = "val"  # cifar10; None = no test set


@dataclass(frozen=True)
class MixSpec:
    """Batch mixing for classifier stages (bridle/training/mixing.py): each batch is mixed with a shuffled
    copy of itself with probability `p`, by mixup (a blend of the inputs) or CutMix (a box of one pasted into
    the other; `cutmix_p` of the mixed batches), and the targets blended in the same proportion."""

    p: float = 0.0  # 0 = off
    mixup_alpha: float = 0.8  # Beta(alpha, alpha) blend weight
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) area kept
    cutmix_p: float = 0.5


@dataclass(frozen=True)
class DataSpec:
    modality: Modality
    train: str | None = None  # a folder, manifest or shards (bridle/training/data.py); or `dataset` below
    test: str | None = None
    dataset: DatasetSpec | None = None
    # classifier stages train on a class-stratified share of the labelled training data (drawn with
    # `label_seed`); pretraining stages always see all of it, unlabelled
    label_fraction: float = 1.0
    label_seed: int = 0
    mix: MixSpec = field(default_factory=MixSpec)
    batch_size: int = 32
    workers: int = 0  # DataLoader worker processes that decode (0: in the training process)
    fbank_stats_clips: int = 512  # audio: training clips the fbank mean/std are measured on
    # training-time augmentation (bridle/training/augment.py): the modality's settings, e.g. {noise_p: 0.5};
    # empty = off. Evaluation data is never augmented.
    augment: dict[str, Any] = field(default_factory=dict)
    # None: files are decoded into memory once before training (today's demo default); a sharded
    # `train` (a folder with shards.json, written by `bridle-train shards`) is always streamed.
    cache: bool | None = None
    prefetch_factor: int = 2  # batches each worker prepares ahead (workers > 0); workers live for a stage
    pin_memory: bool | None = None  # page-locked batches for fast host->GPU copies; None: on with CUDA
    record_seen: bool = False  # write the ids of the examples each step used to <stage>/seen-<rank>.tsv


@dataclass(frozen=True)
class StageSpec:
    kind: StageKind
    steps: int
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.05
    batch_size: int | None = None  # None: data.batch_size
    mode: Literal["linear", "finetune"] = "linear"  # classifier stages only
    # classifier stages only: E from the latest pretrain stage, or (`random`, mode finetune) a fresh E
    # trained with the head; T is the latest earlier one either way
    encoder_init: Literal["pretrained", "random"] = "pretrained"
    name: str | None = None  # folder under out_dir; default "<index>-<kind>"
    log_every: int = 10
    accumulate: int | None = None  # micro-batches per optimiser step; None: train.accumulate
    max_seconds: float | None = None  # time budget: the stage ends (done) at the first step past it
    # tokenizer stages only: how the teacher's features become targets (bridle.normalise_targets)
    target_norm: Literal["instance", "none"] = "instance"


TRAINING_PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")  # what the steps compute in


@dataclass(frozen=True)
class TrainSpec:
    """How the steps run (defaults: today's eager fp32 loop). See docs/configuration.md."""

    # one of TRAINING_PRECISIONS; bf16: autocast for E, D, T, TE; the quantizer in fp32
    precision: Precision = "fp32"
    accumulate: int = 1  # micro-batches of `batch_size` summed into one optimiser step
    compile: bool = False  # torch.compile the transformer stacks of E, D, T, TE
    fused_optimizer: bool = False  # AdamW's fused kernel (CUDA and CPU)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec
    stages: tuple[StageSpec, ...]
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0
    out_dir: str = "runs/default"
    checkpoint_every: int = 100
    source: str = ""  # the recipe file it was read from (provenance)

    def stage_name(self, index: int) -> str:
        stage = self.stages[index]
        return stage.name or f"{index:02d}-{stage.kind}"

    def model_config(self) -> ModelConfig:
        """The preset with the recipe's overrides applied (nested dicts merge into the preset's)."""
        try:
            base = preset(self.model.preset).to_dict()
        except KeyError as e:
            raise RecipeError(str(e.args[0])) from e
        try:
            return ModelConfig.from_dict(_merge(base, self.model.overrides, "model.overrides"))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"model.overrides: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML file, apply dotted `key=value` overrides, check every key and value."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    raw["source"] = str(path)
    return recipe_from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.0.c=value` in a nested dict/list in place (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r} is not of the form key=value")
    parts = key.split(".")
    if parts[0] == "model" and len(parts) > 1 and parts[1] not in ("preset", "overrides"):
        parts.insert(1, "overrides")
    value = yaml.safe_load(text)
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_index(node, part, key)]
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"override {key!r}: {'.'.join(parts[:i])} is not a mapping")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {key!r}: {'.'.join(parts[:-1])} is not a mapping")


def _index(node: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {key!r}: {part!r} is not an index below {len(node)}")
    return int(part)


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    raw = copy.deepcopy(raw)
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError("recipe.stages must be a non-empty list")
    stages = tuple(_build(StageSpec, s, f"stages.{i}") for i, s in enumerate(stages_raw))
    raw["model"] = _build(ModelSpec, raw.get("model"), "model")
    raw["data"] = _build_data(raw.get("data"))
    raw["train"] = _build(TrainSpec, raw.get("train", {}), "train")
    recipe = _build(Recipe, {**raw, "stages": stages}, "recipe")
    _check(recipe)
    recipe.model_config()  # fails early on bad model overrides
    return recipe


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    missing = sorted(
        n
        for n, f in fields.items()
        if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise RecipeError(f"{where}: missing keys {missing}")
    return cls(**raw)


def _build_data(raw: Any) -> DataSpec:
    if not isinstance(raw, dict):
        raise RecipeError(f"data must be a mapping, got {raw!r}")
    raw = dict(raw)
    if raw.get("dataset") is not None:
        dataset = dict(_build(DatasetSpec, raw["dataset"], "data.dataset").__dict__)
        for key in ("train_folds", "test_folds"):
            dataset[key] = tuple(dataset[key])
        raw["dataset"] = DatasetSpec(**dataset)
    raw["mix"] = _build(MixSpec, raw.get("mix", {}), "data.mix")
    return _build(DataSpec, raw, "data")


def _check(recipe: Recipe) -> None:
    if recipe.data.modality not in modality_names():
        raise RecipeError(f"data.modality must be {modality_choices()}, got {recipe.data.modality!r}")
    if recipe.checkpoint_every < 1 or recipe.data.batch_size < 1:
        raise RecipeError("checkpoint_every and data.batch_size must be >= 1")
    if recipe.data.augment:
        try:
            augment_settings(recipe.data.modality, recipe.data.augment)
        except AugmentError as e:
            raise RecipeError(str(e)) from e
    _check_data(recipe.data)
    _check_train(recipe.train)
    names = set()
    for i, s in enumerate(recipe.stages):
        where = f"stages.{i}"
        if s.kind not in STAGE_KINDS:
            raise RecipeError(f"{where}.kind must be one of {STAGE_KINDS}, got {s.kind!r}")
        if s.mode not in CLASSIFIER_MODES:
            raise RecipeError(f"{where}.mode must be one of {CLASSIFIER_MODES}, got {s.mode!r}")
        if not isinstance(s.steps, int) or s.steps < 1:
            raise RecipeError(f"{where}.steps must be a positive integer, got {s.steps!r}")
        if not 0 <= s.warmup_steps <= s.steps:
            raise RecipeError(f"{where}.warmup_steps must be in [0, steps], got {s.warmup_steps!r}")
        if not float(s.lr) > 0 or float(s.weight_decay) < 0:
            raise RecipeError(f"{where}: lr must be > 0 and weight_decay >= 0")
        if s.batch_size is not None and s.batch_size < 1:
            raise RecipeError(f"{where}.batch_size must be >= 1")
        if s.accumulate is not None and not _positive_int(s.accumulate):
            raise RecipeError(f"{where}.accumulate must be a positive integer, got {s.accumulate!r}")
        if s.max_seconds is not None and not (_number(s.max_seconds) and s.max_seconds > 0):
            raise RecipeError(
                f"{where}.max_seconds must be a positive number of seconds, got {s.max_seconds!r}"
            )
        if s.target_norm not in TARGET_NORMS:
            raise RecipeError(f"{where}.target_norm must be one of {TARGET_NORMS}, got {s.target_norm!r}")
        if s.encoder_init not in ENCODER_INITS:
            raise RecipeError(f"{where}.encoder_init must be one of {ENCODER_INITS}, got {s.encoder_init!r}")
        if s.encoder_init == "random" and (s.kind != "classifier" or s.mode != "finetune"):
            raise RecipeError(f"{where}.encoder_init random is for classifier stages in mode finetune")
        name = recipe.stage_name(i)
        if name in names or name == "servable":
            raise RecipeError(f"{where}: stage name {name!r} is used twice or reserved")
        names.add(name)
    if recipe.stages[0].kind == "tokenizer":
        raise RecipeError("a tokenizer stage needs an encoder: put a pretrain stage before it")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_data(data: DataSpec) -> None:
    if (data.train is None) == (data.dataset is None):
        raise RecipeError("data: give either train (a folder, manifest or shards) or dataset, not both")
    if data.dataset is not None:
        _check_dataset(data.dataset, data.modality)
    if not (_number(data.label_fraction) and 0 < data.label_fraction <= 1):
        raise RecipeError(f"data.label_fraction must lie in (0, 1], got {data.label_fraction!r}")
    mix = data.mix
    if not all(_number(v) for v in (mix.p, mix.mixup_alpha, mix.cutmix_alpha, mix.cutmix_p)):
        raise RecipeError("data.mix: p, mixup_alpha, cutmix_alpha and cutmix_p must be numbers")
    if not (0 <= mix.p <= 1 and 0 <= mix.cutmix_p <= 1 and mix.mixup_alpha > 0 and mix.cutmix_alpha > 0):
        raise RecipeError("data.mix: p and cutmix_p must lie in [0, 1], the alphas be > 0")
    if not isinstance(data.workers, int) or isinstance(data.workers, bool) or data.workers < 0:
        raise RecipeError(f"data.workers must be an integer >= 0, got {data.workers!r}")
    if not _positive_int(data.prefetch_factor):
        raise RecipeError(f"data.prefetch_factor must be a positive integer, got {data.prefetch_factor!r}")
    for key in ("cache", "pin_memory"):
        if getattr(data, key) not in (None, True, False):
            raise RecipeError(f"data.{key} must be true, false or null, got {getattr(data, key)!r}")
    if not isinstance(data.record_seen, bool):
        raise RecipeError(f"data.record_seen must be true or false, got {data.record_seen!r}")


def _check_dataset(d: DatasetSpec, modality: str) -> None:
    expected = {"urbansound8k": "audio", "cifar10": "image"}
    if d.name not in DATASETS:
        raise RecipeError(f"data.dataset.name must be one of {DATASETS}, got {d.name!r}")
    if modality != expected[d.name]:
        raise RecipeError(f"data.dataset {d.name} is {expected[d.name]}, data.modality says {modality!r}")
    if d.name == "urbansound8k":
        folds = (*d.train_folds, *d.test_folds)
        if not d.train_folds or not all(_positive_int(f) and f <= 10 for f in folds):
            raise RecipeError("data.dataset: urbansound8k takes train_folds (and test_folds) among 1-10")
        if set(d.train_folds) & set(d.test_folds):
            raise RecipeError(
                f"data.dataset: folds {sorted(set(d.train_folds) & set(d.test_folds))} "
                "are in both train_folds and test_folds"
            )
    elif d.train_split == d.test_split or (d.train_split, d.test_split) in {("train-all", "val")}:
        raise RecipeError(
            f"data.dataset: the test split {d.test_split!r} overlaps train_split {d.train_split!r}"
        )


def _check_train(train: TrainSpec) -> None:
    if train.precision not in TRAINING_PRECISIONS:
        raise RecipeError(f"train.precision must be one of {TRAINING_PRECISIONS}, got {train.precision!r}")
    if not _positive_int(train.accumulate):
        raise RecipeError(f"train.accumulate must be a positive integer, got {train.accumulate!r}")
    for key in ("compile", "fused_optimizer"):
        if not isinstance(getattr(train, key), bool):
            raise RecipeError(f"train.{key} must be true or false, got {getattr(train, key)!r}")


def _merge(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(changes, dict):
        raise RecipeError(f"{where} must be a mapping, got {changes!r}")
    out = dict(base)
    for key, value in changes.items():
        if key not in out:
            raise RecipeError(f"{where}: unknown model field {key!r}; allowed: {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out
