"""Typed configuration for every BRIDLE model part, and named presets.

One `ModelConfig` describes a whole model: the modality and its input, the patch grid, the four
networks (encoder E, label predictor D, tokenizer T, tokenizer estimator TE), the residual quantizer
and the masking. Training recipes, checkpoints, exports and the service all carry this object (as
JSON through `to_dict` / `from_dict`), so nothing else needs its own copy of these numbers.

Imports no torch: the service reads configs too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# the input types live in bridle/model/inputs.py (beside the modality registry); read from here as before
from bridle.model.inputs import IMAGENET_MEAN as IMAGENET_MEAN
from bridle.model.inputs import IMAGENET_STD as IMAGENET_STD
from bridle.model.inputs import RESAMPLE_FILTERS as RESAMPLE_FILTERS
from bridle.model.inputs import AudioInput, ImageInput, ImageProcessing, VideoInput, build_frozen
from bridle.model.modalities import Modality, spec_for

# A numeric format: what a model directory's graphs are stored in (bridle.model.manifest.PRECISIONS), and
# what training computes in (training.recipe.TRAINING_PRECISIONS)
Precision = Literal["fp32", "fp16", "bf16", "int8"]


@dataclass(frozen=True)
class ViTConfig:
    """A stack of pre-LN transformer blocks."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class QuantizerConfig:
    """Residual quantizer: `levels` codebooks of `codebook_size` codes of `dim` each."""

    levels: int = 4
    codebook_size: int = 256
    dim: int = 256
    decay: float = 0.99  # EMA decay of the codewords
    beta: float = 0.25  # commitment weight in L_cb
    init: Literal["kmeans", "random"] = "kmeans"
    kmeans_iters: int = 10
    dead_code_steps: int = 100  # a code unused this many updates in a row is re-seeded; 0 = never


@dataclass(frozen=True)
class BeatsBackboneConfig:
    """What a BEATs transformer (bridle/model/beats.py) adds to its `ViTConfig`: a conv stem of
    `embed_dim` channels, a grouped convolutional position embedding, post-LN (deep-norm) blocks and a
    gated relative position bias over `num_buckets` log-spaced distance buckets."""

    embed_dim: int = 512  # channels of the patch conv, projected to the ViT dim when they differ
    conv_bias: bool = False  # the patch conv has a bias
    conv_pos: int = 128  # kernel of the positional convolution (over the token sequence)
    conv_pos_groups: int = 16
    relative_position: bool = True  # relative position bias in the attention
    num_buckets: int = 320
    max_distance: int = 800
    gated_position_bias: bool = True  # the bias is scaled per query by a gate computed from it
    deep_norm: bool = True  # residual x * (2 depth)^(1/4) before each post-LN


@dataclass(frozen=True)
class BeatsConfig:
    """E (and T, when it is a BEATs tokenizer) are BEATs transformers instead of BRIDLE's ViTs."""

    encoder: BeatsBackboneConfig = field(default_factory=BeatsBackboneConfig)
    tokenizer: BeatsBackboneConfig | None = None  # None: the model has no BEATs tokenizer


@dataclass(frozen=True)
class HFBackboneConfig:
    """What an imported Hugging Face ViT-family encoder (bridle/model/hf_vit.py) sets beyond its
    `ViTConfig`: all are pre-LN ViTs that differ only in these options."""

    family: Literal["vit", "deit", "beit", "dinov2", "ast", "videomae"]
    grid: tuple[int, ...]  # the patch grid of the encoder's output tokens (AST: (time, mel), overlapping)
    patch_stride: tuple[int, ...] = ()  # the patch conv's stride on its input; () = the patch size
    prefix_tokens: int = 1  # learned tokens before the patches: cls (1), cls + distillation (2), none (0)
    position: Literal["learned", "sincos", "none"] = "learned"  # absolute positions added to every token
    layer_scale: bool = False  # per-channel scales on both residual branches (DINOv2, BEiT)
    relative_position: Literal["none", "layer", "shared"] = "none"  # BEiT's attention bias tables
    layer_norm_eps: float = 1e-12
    final_norm: bool = True  # a LayerNorm over the whole output sequence
    # the embedding the classifier reads: "cls" the first token; "concat" the first two side by side;
    # "two_mean" their mean (AST); "cls_mean" cls beside the patch mean (DINOv2); "mean" the patch mean
    pooling: Literal["cls", "concat", "two_mean", "cls_mean", "mean"] = "cls"
    pool_norm: bool = False  # a LayerNorm on the pooled vector (VideoMAE's fc_norm, BEiT's pooler)
    pool_norm_eps: float = 1e-12
    head_norm: bool = False  # the classifier is LayerNorm + Linear (AST's MLP head)

    @property
    def embedding_factor(self) -> int:
        """The embedding's width in units of the encoder dim."""
        return 2 if self.pooling in ("concat", "cls_mean") else 1


@dataclass(frozen=True)
class ModelConfig:
    modality: Modality
    input: AudioInput | ImageInput | VideoInput  # the modality's input type (its spec's `input_type`)
    patch_size: int = 16  # square patches on (time x mel) or (H x W)
    tubelet: int = 2  # video only: frames per tubelet
    encoder: ViTConfig = field(default_factory=ViTConfig)  # E
    predictor: ViTConfig = field(default_factory=lambda: ViTConfig(dim=512, depth=16, heads=8))  # D
    tokenizer: ViTConfig = field(default_factory=ViTConfig)  # T's ViT
    estimator: ViTConfig = field(default_factory=lambda: ViTConfig(depth=3))  # TE
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    mask_ratio: float = 0.8  # video: tube masking, 0.9 in the reference
    # "softmax": one label per input; "sigmoid": independent labels (multi-label, as AudioSet's)
    classifier_activation: Literal["softmax", "sigmoid"] = "softmax"
    beats: BeatsConfig | None = None  # an imported BEATs model (bridle/importers/beats.py)
    hf: HFBackboneConfig | None = None  # an imported Hugging Face model (bridle/importers/hf.py)

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self.input.channels

    @property
    def grid(self) -> tuple[int, ...]:
        """Patch grid: audio (time, mel), image (h, w), video (t, h, w): the input type's."""
        if self.hf is not None:
            return self.hf.grid
        return self.input.patch_grid(self.patch_size, self.tubelet)

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch (or tubelet)."""
        t = self.input.frames_per_patch(self.tubelet)
        return self.in_channels * t * self.patch_size * self.patch_size

    def __post_init__(self) -> None:
        expected = spec_for(self.modality).input_type  # UnknownModality for a name not registered
        if not isinstance(self.input, expected):
            raise ValueError(f"modality {self.modality!r} needs {expected.__name__}, got {type(self.input)}")
        if self.classifier_activation not in ("softmax", "sigmoid"):
            raise ValueError(
                f"classifier_activation must be 'softmax' or 'sigmoid', got {self.classifier_activation!r}"
            )
        if self.beats is not None and self.modality != "audio":
            raise ValueError(f"BEATs models are audio models, got modality {self.modality!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        dims = self.input.patched_sizes()
        if self.hf is None and any(d % self.patch_size for d in dims):
            raise ValueError(f"input sizes {dims} must be multiples of patch_size {self.patch_size}")
        self.input.check(self.tubelet)

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        input_cls = spec_for(d["modality"]).input_type
        inp = dict(d["input"])
        if inp.get("processing") is not None:
            inp["processing"] = ImageProcessing.from_dict(inp["processing"])
        d["input"] = _build(input_cls, inp)
        for name in ("encoder", "predictor", "tokenizer", "estimator"):
            if name in d:
                d[name] = _build(ViTConfig, d[name])
        if "quantizer" in d:
            d["quantizer"] = _build(QuantizerConfig, d["quantizer"])
        if d.get("beats") is not None:
            beats = dict(d["beats"])
            for name in ("encoder", "tokenizer"):
                if beats.get(name) is not None:
                    beats[name] = _build(BeatsBackboneConfig, beats[name])
            d["beats"] = _build(BeatsConfig, beats)
        if d.get("hf") is not None:
            d["hf"] = _build(HFBackboneConfig, d["hf"])
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# Fields that configs written by earlier versions hold and that never changed a result: dropped on read.
RETIRED_FIELDS: dict[type, set[str]] = {QuantizerConfig: {"eps"}}


def _build(cls: type, d: dict[str, Any]) -> Any:
    """Build a frozen dataclass from a dict, turning lists back into tuples."""
    return build_frozen(cls, d, RETIRED_FIELDS.get(cls, set()))


# ---- presets ---------------------------------------------------------------------------------
# micro: seconds per test on a 2-core CPU.  tiny: the demo models.  base: the paper's ViT-B.

_MICRO_VIT = ViTConfig(dim=32, depth=1, heads=2, mlp_ratio=2.0)
_MICRO_RQ = QuantizerConfig(levels=2, codebook_size=16, dim=16, kmeans_iters=3, dead_code_steps=10)
_TINY_VIT = ViTConfig(dim=192, depth=4, heads=3, mlp_ratio=4.0)
_TINY_TOKENIZER = ViTConfig(dim=192, depth=2, heads=3, mlp_ratio=4.0)  # keeps the bundled models small
_TINY_RQ = QuantizerConfig(levels=4, codebook_size=128, dim=64, dead_code_steps=50)


def _sized(
    modality: Modality,
    input_: Any,
    patch: int,
    vit: ViTConfig,
    pred: ViTConfig,
    est: ViTConfig,
    rq: QuantizerConfig,
    tokenizer: ViTConfig | None = None,
    mask_ratio: float = 0.8,
) -> ModelConfig:
    return ModelConfig(
        modality=modality,
        input=input_,
        patch_size=patch,
        encoder=vit,
        predictor=pred,
        tokenizer=tokenizer or vit,
        estimator=est,
        quantizer=rq,
        mask_ratio=mask_ratio,
    )


TUBE_MASK_RATIO = 0.9  # video: tube masking, 0.9 in the reference


PRESETS: dict[str, ModelConfig] = {
    # micro: 1-block 32-d networks on small inputs (tests)
    "micro-audio": _sized(
        "audio", AudioInput(num_mel_bins=32, num_frames=32), 8, _MICRO_VIT, _MICRO_VIT, _MICRO_VIT, _MICRO_RQ
    ),
    "micro-image": _sized(
        "image", ImageInput(image_size=16), 4, _MICRO_VIT, _MICRO_VIT, _MICRO_VIT, _MICRO_RQ
    ),
    "micro-video": _sized(
        "video",
        VideoInput(num_frames=4, image_size=16),
        4,
        _MICRO_VIT,
        _MICRO_VIT,
        _MICRO_VIT,
        _MICRO_RQ,
        mask_ratio=TUBE_MASK_RATIO,
    ),
    # tiny: 4 x 192 ViTs (T: 2 x 192), the bundled demo models
    # (1.28 s audio windows, 32 px images, 8-frame clips)
    "tiny-audio": _sized(
        "audio",
        AudioInput(num_mel_bins=128, num_frames=128),
        16,
        _TINY_VIT,
        ViTConfig(dim=128, depth=2, heads=4),
        ViTConfig(dim=192, depth=1, heads=3),
        _TINY_RQ,
        _TINY_TOKENIZER,
    ),
    "tiny-image": _sized(
        "image",
        ImageInput(image_size=32),
        4,
        _TINY_VIT,
        ViTConfig(dim=128, depth=2, heads=4),
        ViTConfig(dim=192, depth=1, heads=3),
        _TINY_RQ,
        _TINY_TOKENIZER,
    ),
    "tiny-video": _sized(
        "video",
        VideoInput(num_frames=8, image_size=32),
        8,
        _TINY_VIT,
        ViTConfig(dim=128, depth=2, heads=4),
        ViTConfig(dim=192, depth=1, heads=3),
        _TINY_RQ,
        _TINY_TOKENIZER,
        mask_ratio=TUBE_MASK_RATIO,
    ),
    # base: the paper's ViT-B (12 x 768), D of 16 x 512, TE of 3 blocks, RQ 4 x 256 x 256
    "base-audio": ModelConfig(modality="audio", input=AudioInput(), mask_ratio=0.8),
    "base-image": ModelConfig(modality="image", input=ImageInput(), mask_ratio=0.8),
    "base-video": ModelConfig(modality="video", input=VideoInput(), mask_ratio=TUBE_MASK_RATIO),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with top-level fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
