"""Import a Hugging Face ViT-family model folder (config.json + model.safetensors) as a servable checkpoint.

Design: like the BEATs importer, this maps the upstream weights into the project's own torch modules
(`bridle/model/hf_vit.py`, one parametrised pre-LN ViT for all six families), so export, verify, the
service and the batch job need nothing beyond what the manifest says. Nothing here imports
`transformers`: the folder is read as JSON and safetensors, so importing needs no network and runs no
upstream code. Supported `model_type`s (config.json):

    vit, deit, beit, dinov2 (images), videomae (video), audio-spectrogram-transformer (AST, audio)

Per family (as its Hugging Face model and image processor / feature extractor do):

    family    tokens        positions                   blocks                  embedding (the head's input)
    vit       cls           learned                     pre-LN                  final-norm cls
    deit      cls, distill  learned                     pre-LN                  cls (teacher: cls | distill)
    beit      cls           none or learned             layer scale, rel. bias  patch mean -> LN (or cls)
    dinov2    cls           learned, resized (bicubic)  layer scale             cls | patch mean
    videomae  none          fixed 1-D sinusoid          pre-LN                  patch mean -> fc_norm
    ast       cls, distill  learned                     pre-LN, stride-10 conv  mean of cls and distill

(`a | b`: side by side.) DeiT's teacher model averages two heads; its head here is the one Linear on
cls | distill that gives the same logits. A folder without a classification head (ViTModel, Dinov2Model,
VideoMAEModel, ...) imports as an embeddings-and-codes model without labels; the pooler of a ViTModel /
DeiTModel and the decoder of a VideoMAE pre-training checkpoint are not part of the embedding and are
dropped (named in the provenance). Labels are `config.id2label`; a name used by more than one class
(ImageNet has two "crane"s) gets its class index appended.

Preprocessing comes from `preprocessor_config.json` (`image_processing`; the family's Hub processor
when it is absent): the rescale factor, mean and std run inside the exported graph; the geometry (resize
squash or shortest edge, filter, centre crop, RGB conversion) is recorded as the input's `ImageProcessing`,
which the manifest carries and the service's and batch job's decoding follow; the graph's input is the
processor's final size. VideoMAE's clips sample frame i * n // T as transformers' video processors do.
AST: Kaldi fbank of the unscaled waveform (hanning window, `num_mel_bins`), `max_length` frames, a shorter
clip padded with zero fbank frames (`AudioInput.pad` "fbank"), (x - mean) / (2 std) with the extractor's
mean and std. The tokenizer is the project's random-
projection tokenizer (`tokenizer_kind` "random") until `bridle-train tokenizer` distils one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from safetensors import SafetensorError
from safetensors.torch import load_file

from bridle.importers.families import Force, Out, importer_family
from bridle.model.checkpoint import Servable, build_servable, save_servable
from bridle.model.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESAMPLE_FILTERS,
    AudioInput,
    HFBackboneConfig,
    ImageInput,
    ImageProcessing,
    ModelConfig,
    VideoInput,
    ViTConfig,
)
from bridle.model.manifest import sha256_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
# model_type -> (modality, the base model's key prefix in a *For...Classification checkpoint)
FAMILIES: dict[str, tuple[str, str]] = {
    "vit": ("image", "vit"),
    "deit": ("image", "deit"),
    "beit": ("image", "beit"),
    "dinov2": ("image", "dinov2"),
    "videomae": ("video", "videomae"),
    "audio-spectrogram-transformer": ("audio", "audio_spectrogram_transformer"),
}
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers' OPENAI_CLIP_MEAN / STD (BitImageProcessor)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Each image processor class transformers has for these families, and what it does with a key the file
# leaves out: (an int `size` is a square, size, resample, do_center_crop, crop_size, mean, std,
# do_convert_rgb): the class attributes of its PIL backend (transformers 5, e.g. ViTImageProcessorPil).
PROCESSOR_CLASSES: dict[str, tuple[bool, dict[str, int], int, bool, int, Any, Any, bool]] = {
    "ViTImageProcessor": (True, {"height": 224, "width": 224}, 2, False, 224, HALF, HALF, False),
    "DeiTImageProcessor": (True, {"height": 256, "width": 256}, 3, True, 224, HALF, HALF, False),
    "BeitImageProcessor": (True, {"height": 224, "width": 224}, 3, False, 224, HALF, HALF, False),
    "BitImageProcessor": (False, {"shortest_edge": 224}, 3, True, 224, CLIP_MEAN, CLIP_STD, True),
    "VideoMAEImageProcessor": (False, {"shortest_edge": 224}, 2, True, 224, HALF, HALF, False),
}
FAMILY_PROCESSOR = {
    "vit": "ViTImageProcessor",
    "deit": "DeiTImageProcessor",
    "beit": "BeitImageProcessor",
    "dinov2": "BitImageProcessor",
    "videomae": "VideoMAEImageProcessor",
}


def family_default(family: str, image_size: int) -> tuple[str, dict[str, Any]]:
    """(where it is from, the preprocessor_config.json) a folder without one is given: its family's
    processor as the Hub's reference model ships it, at config.json's image size (DINOv2: 256 -> 224
    whatever its training size)."""
    s = image_size
    imagenet = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    square = {"height": s, "width": s}
    files: dict[str, tuple[str, dict[str, Any]]] = {
        "vit": ("google/vit-base-patch16-224", {"size": square, "resample": 2, "image_mean": list(HALF),
                                                "image_std": list(HALF)}),
        "deit": ("facebook/deit-base-distilled-patch16-224", {
            "size": {"height": s * 256 // 224, "width": s * 256 // 224}, "resample": 3,
            "do_center_crop": True, "crop_size": square, **imagenet}),
        "beit": ("microsoft/beit-base-patch16-224", {"size": square, "resample": 2,
                                                     "do_center_crop": False, "image_mean": list(HALF),
                                                     "image_std": list(HALF)}),
        "dinov2": ("facebook/dinov2-small", {"size": {"shortest_edge": 256}, "resample": 3,
                                             "do_center_crop": True, "do_convert_rgb": True,
                                             "crop_size": {"height": 224, "width": 224}, **imagenet}),
        "videomae": ("MCG-NJU/videomae-base-finetuned-kinetics", {
            "size": {"shortest_edge": s}, "resample": 2, "do_center_crop": True, "crop_size": square,
            **imagenet}),
    }  # fmt: skip
    hub, pre = files[family]
    return f"the {family} family's default (the processor of {hub}, at {s} px)", {
        "image_processor_type": FAMILY_PROCESSOR[family],
        **pre,
    }


AST_MEAN, AST_STD = -4.2677393, 4.5689974  # ASTFeatureExtractor's defaults (AudioSet statistics)
QKV = ("query", "key", "value")
# tensors a checkpoint may hold that the embedding never reads (base-model keys, prefix stripped)
DROPPED_PREFIXES = ("pooler.", "embeddings.mask_token", "decoder.", "encoder_to_decoder.", "mask_token")


class HFImportError(ValueError):
    """A Hugging Face model folder cannot be imported; the message says what is wrong with it."""


@dataclass(frozen=True)
class Folder:
    """One Hugging Face model folder, read."""

    path: Path
    config: dict[str, Any]
    preprocessor: dict[str, Any] | None
    state: dict[str, torch.Tensor]


def read_folder(path: str | os.PathLike[str]) -> Folder:
    """config.json, the optional preprocessor_config.json and model.safetensors of `path`."""
    root = Path(path)
    if not root.is_dir():
        raise HFImportError(f"model folder {str(root)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            extra = ""
            if name == WEIGHTS_FILE and (root / "pytorch_model.bin").is_file():
                extra = " (only pytorch_model.bin is there: download the safetensors revision)"
            raise HFImportError(f"model folder {str(root)!r} has no {name}{extra}")
    config = _read_json(root / CONFIG_FILE)
    pre = _read_json(root / PREPROCESSOR_FILE) if (root / PREPROCESSOR_FILE).is_file() else None
    try:
        state = load_file(str(root / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise HFImportError(f"{root / WEIGHTS_FILE} is not a readable safetensors file: {e}") from e
    return Folder(root, config, pre, state)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFImportError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise HFImportError(f"{path} must hold a JSON object")
    return value


def _get(cfg: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """config[key] of type `kind` (int accepted for float), or `default` when absent and not None."""
    if key not in cfg:
        if default is None:
            raise HFImportError(f"config.json has no {key!r}")
        return default
    value = cfg[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise HFImportError(f"config.json {key!r} must be {kind.__name__}, got {value!r}")
    return value


# ---- the model's settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the import builds: the bridle config, and how to fill its networks."""

    config: ModelConfig
    family: str
    has_head: bool
    deit_teacher: bool  # DeiT's two-head model
    qkv_bias: bool  # query and value projections have biases (the key's has none in BEiT and VideoMAE)


def plan(folder: Folder, clip_seconds: float) -> Plan:
    """The bridle `ModelConfig` of a folder (refusing what hf_vit cannot reproduce)."""
    cfg = folder.config
    model_type, family, modality = _family(cfg)
    vit = _transformer(cfg, family)
    eps = _get(cfg, "layer_norm_eps", float, 1e-12)
    p = _get(cfg, "patch_size", int)
    state = _strip_base(folder.state, FAMILIES[model_type][1])
    has_head = any(k.startswith(("classifier.", "cls_classifier.")) for k in state)
    hf: dict[str, Any] = {"family": family, "layer_norm_eps": eps}
    if modality == "audio":
        inp, grid, tubelet = _ast_input(folder, p, hf)
    else:
        inp, grid, tubelet = _visual_input(folder, family, modality, p, clip_seconds)
        hf.update(_family_options(family, cfg, state, has_head, eps))
    config = ModelConfig(
        modality=modality,  # type: ignore[arg-type]
        input=inp,
        patch_size=p,
        tubelet=tubelet,
        encoder=vit,
        tokenizer=vit,
        classifier_activation="sigmoid" if family == "ast" else "softmax",
        hf=HFBackboneConfig(grid=grid, **hf),
    )
    qkv_bias = bool(cfg.get("qkv_bias", cfg.get("qv_bias", True)))
    return Plan(config, family, has_head, "cls_classifier.weight" in state, qkv_bias)


def _family(cfg: dict[str, Any]) -> tuple[str, str, str]:
    """(model_type, family, modality) of a supported config.json."""
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise HFImportError(
            f"config.json model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}"
        )
    family = "ast" if model_type == "audio-spectrogram-transformer" else str(model_type)
    return str(model_type), family, FAMILIES[model_type][0]


def _transformer(cfg: dict[str, Any], family: str) -> ViTConfig:
    """The encoder's size (a gelu transformer whose MLP width is a ratio of its width)."""
    dim = _get(cfg, "hidden_size", int)
    heads = _get(cfg, "num_attention_heads", int)
    depth = _get(cfg, "num_hidden_layers", int)
    act = _get(cfg, "hidden_act", str, "gelu")
    if act != "gelu":
        raise HFImportError(f"config.json hidden_act {act!r} is not supported (only 'gelu')")
    if min(dim, heads, depth) < 1 or dim % heads:
        raise HFImportError(f"hidden_size {dim} must be a positive multiple of num_attention_heads {heads}")
    if family == "dinov2":
        if _get(cfg, "use_swiglu_ffn", bool, False):
            raise HFImportError("DINOv2 with use_swiglu_ffn (the giant model) is not supported")
        hidden = int(dim * _get(cfg, "mlp_ratio", float, 4.0))
    else:
        hidden = _get(cfg, "intermediate_size", int)
    vit = ViTConfig(dim=dim, depth=depth, heads=heads, mlp_ratio=hidden / dim)
    if int(dim * vit.mlp_ratio) != hidden:
        raise HFImportError(f"intermediate_size {hidden} is not reproducible as a ratio of {dim}")
    return vit


def _ast_input(folder: Folder, p: int, hf: dict[str, Any]) -> tuple[AudioInput, tuple[int, ...], int]:
    """(input, patch grid (time, mel), tubelet) of an AST model, as its feature extractor computes the
    fbank; adds AST's options to `hf`."""
    cfg, pre = folder.config, folder.preprocessor or {}
    mel = _get(cfg, "num_mel_bins", int, 128)
    frames = _get(cfg, "max_length", int, 1024)
    fs, ts = _get(cfg, "frequency_stride", int, 10), _get(cfg, "time_stride", int, 10)
    if mel < p or frames < p:
        raise HFImportError(f"num_mel_bins {mel} and max_length {frames} must be >= patch_size {p}")
    normalise = bool(pre.get("do_normalize", True))
    inp = AudioInput(
        sample_rate=int(pre.get("sampling_rate", 16_000)),
        num_mel_bins=mel,
        num_frames=frames,
        window="hanning",
        mean=float(pre.get("mean", AST_MEAN)) if normalise else 0.0,
        std=float(pre.get("std", AST_STD)) if normalise else 0.5,
        waveform_scale=1.0,
        pad="fbank",  # ASTFeatureExtractor pads the fbank with zero frames, not the waveform
    )
    hf.update(prefix_tokens=2, pooling="two_mean", head_norm=True, patch_stride=(fs, ts))
    return inp, ((frames - p) // ts + 1, (mel - p) // fs + 1), 2


def _visual_input(
    folder: Folder, family: str, modality: str, p: int, clip_seconds: float
) -> tuple[ImageInput | VideoInput, tuple[int, ...], int]:
    """(input, patch grid, tubelet) of an image or video model, with its processor's geometry."""
    cfg = folder.config
    if _get(cfg, "num_channels", int, 3) != 3:
        raise HFImportError("only 3-channel (RGB) image and video models are supported")
    processing, mean, std = image_processing(folder.preprocessor, family, _get(cfg, "image_size", int))
    size = int(processing.crop[0] if processing.crop else processing.size[0])
    if size % p:
        raise HFImportError(f"the processor's image size {size} is not a multiple of patch_size {p}")
    if family != "dinov2" and size != _get(cfg, "image_size", int):
        raise HFImportError(
            f"the processor's image size {size} differs from config.json image_size "
            f"{cfg['image_size']} (only DINOv2 resizes its position embeddings)"
        )
    geometry: dict[str, Any] = {"image_size": size, "mean": mean, "std": std, "processing": processing}
    if modality == "image":
        return ImageInput(**geometry), (size // p, size // p), 2
    tubelet = _get(cfg, "tubelet_size", int, 2)
    frames = _get(cfg, "num_frames", int, 16)
    if frames % tubelet:
        raise HFImportError(f"num_frames {frames} is not a multiple of tubelet_size {tubelet}")
    # frame_sampling "floor": transformers' video processors' sampling, frame i * n // T
    video = VideoInput(num_frames=frames, clip_seconds=clip_seconds, frame_sampling="floor", **geometry)
    return video, (frames // tubelet, size // p, size // p), tubelet


def _family_options(
    family: str, cfg: dict[str, Any], state: dict[str, torch.Tensor], has_head: bool, eps: float
) -> dict[str, Any]:
    """The HFBackboneConfig options of an image or video family."""
    if family == "vit":
        return {}
    if family == "deit":
        return {"prefix_tokens": 2, "pooling": "concat" if "cls_classifier.weight" in state else "cls"}
    if family == "dinov2":
        return {"layer_scale": True, "pooling": "cls_mean"}
    if family == "videomae":
        if not _get(cfg, "use_mean_pooling", bool, True):
            raise HFImportError(
                "VideoMAE with use_mean_pooling=False (no cls token to pool) is not supported"
            )
        return {
            "prefix_tokens": 0,
            "position": "sincos",
            "final_norm": False,
            "pooling": "mean",
            "pool_norm": has_head,  # fc_norm belongs to the classification model
            "pool_norm_eps": 1e-5,  # nn.LayerNorm's default, which fc_norm uses
        }
    # beit
    mean_pooling = _get(cfg, "use_mean_pooling", bool, True)
    relative = "none"
    if _get(cfg, "use_shared_relative_position_bias", bool, False):
        relative = "shared"
    elif _get(cfg, "use_relative_position_bias", bool, False):
        relative = "layer"
    return {
        "position": "learned" if _get(cfg, "use_absolute_position_embeddings", bool, False) else "none",
        "layer_scale": _get(cfg, "layer_scale_init_value", float, 0.1) > 0,
        "relative_position": relative,
        "final_norm": not mean_pooling,
        "pooling": "mean" if mean_pooling else "cls",
        "pool_norm": mean_pooling,
        "pool_norm_eps": eps,
    }


def image_processing(
    pre: dict[str, Any] | None, family: str, image_size: int
) -> tuple[ImageProcessing, tuple[float, float, float], tuple[float, float, float]]:
    """The processor of `preprocessor_config.json` (`pre`; None: the family's default), and the graph's
    mean and std with its rescale factor folded in: (x r - m) / s = (x / 255 - m / (255 r)) / (s / (255 r)).

    Every key the processor reads is taken as transformers reads it; a key the file leaves out gets the
    processor class's own default. `crop_pct` is read by none of these classes (ConvNeXt's is another
    processor), so it is ignored as transformers ignores it here."""
    if pre is None:
        source, pre = family_default(family, image_size)
    else:
        source = PREPROCESSOR_FILE
    kind = _processor_class(pre, family)
    square, size, resample, crop, crop_size, mean, std, rgb = PROCESSOR_CLASSES[kind]
    if not _flag(pre, "do_resize", True):
        raise HFImportError(f"{PREPROCESSOR_FILE} do_resize false is not supported (the graph has one size)")
    resize, dims = _size(pre.get("size", size), square)
    crop_hw = _crop(pre.get("crop_size", crop_size)) if _flag(pre, "do_center_crop", crop) else None
    code = pre.get("resample", resample)
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < len(RESAMPLE_FILTERS):
        raise HFImportError(f"{PREPROCESSOR_FILE} resample {code!r} must be one of PIL's filters 0..5")
    rescale = (
        _number(pre.get("rescale_factor", 1 / 255), "rescale_factor")
        if _flag(pre, "do_rescale", True)
        else None
    )
    normalise = _flag(pre, "do_normalize", True)
    m = _triple(pre.get("image_mean", mean), "image_mean") if normalise else None
    sd = _triple(pre.get("image_std", std), "image_std") if normalise else None
    ignored = [key for key in ("crop_pct",) if key in pre]
    processing = ImageProcessing(
        resize=resize,
        size=dims,
        resample=RESAMPLE_FILTERS[code],
        crop=crop_hw,
        convert_rgb=_flag(pre, "do_convert_rgb", rgb),
        rescale_factor=rescale,
        mean=m,
        std=sd,
        source=f"{source} ({kind})"
        + (f"; {', '.join(ignored)} ignored, as {kind} ignores it" if ignored else ""),
    )
    out = processing.output_size
    if out is None or out[0] != out[1]:
        raise HFImportError(
            f"{PREPROCESSOR_FILE}: the processor's images are {'not of one size' if out is None else out} "
            "(size and crop_size), not a square of one size the graph can take"
        )
    if crop_hw is not None and resize == "squash" and (dims[0] < crop_hw[0] or dims[1] < crop_hw[1]):
        raise HFImportError(f"{PREPROCESSOR_FILE} crop_size {crop_hw} is larger than size {dims}")
    k = 255.0 * (rescale if rescale is not None else 1.0)
    gm, gs = (m, sd) if m is not None and sd is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return processing, tuple(x / k for x in gm), tuple(x / k for x in gs)  # type: ignore[return-value]


def _processor_class(pre: dict[str, Any], family: str) -> str:
    """The image processor class a preprocessor_config.json names (its fast and PIL variants, and the older
    feature extractor names, read as the class itself); the family's when it names none."""
    kind = str(
        pre.get("image_processor_type") or pre.get("feature_extractor_type") or FAMILY_PROCESSOR[family]
    )
    kind = kind.removesuffix("Fast").removesuffix("Pil").replace("FeatureExtractor", "ImageProcessor")
    if kind not in PROCESSOR_CLASSES:
        raise HFImportError(
            f"{PREPROCESSOR_FILE} names the processor {kind!r}; supported: {sorted(PROCESSOR_CLASSES)}"
        )
    return kind


def _flag(pre: dict[str, Any], key: str, default: bool) -> bool:
    value = pre.get(key, default)
    if value is None:  # transformers reads a null flag as off
        return False
    if not isinstance(value, bool):
        raise HFImportError(f"{PREPROCESSOR_FILE} {key} must be true or false, got {value!r}")
    return value


def _number(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise HFImportError(f"{PREPROCESSOR_FILE} {what} must be a positive number, got {value!r}")
    return float(value)


def _size(size: Any, square: bool) -> tuple[str, tuple[int, ...]]:
    """("squash", (h, w)) or ("shortest_edge", (s,)) of a processor's `size`, as get_size_dict reads it
    (an int is a square for ViT, DeiT and BEiT processors, the shorter side for Bit and VideoMAE's)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return ("squash", (size, size)) if square else ("shortest_edge", (size,))
    if isinstance(size, dict):
        if set(size) == {"height", "width"} and all(_positive(v) for v in size.values()):
            return "squash", (int(size["height"]), int(size["width"]))
        if set(size) == {"shortest_edge"} and _positive(size["shortest_edge"]):
            return "shortest_edge", (int(size["shortest_edge"]),)
    raise HFImportError(
        f"{PREPROCESSOR_FILE} size {size!r} is not supported: an int, {{height, width}} or {{shortest_edge}}"
    )


def _crop(size: Any) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if (
        isinstance(size, dict)
        and set(size) == {"height", "width"}
        and all(_positive(v) for v in size.values())
    ):
        return (int(size["height"]), int(size["width"]))
    raise HFImportError(f"{PREPROCESSOR_FILE} crop_size {size!r} must be an int or {{height, width}}")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        value = [value] * 3
    if not isinstance(value, list) or len(value) != 3:
        raise HFImportError(f"preprocessor_config.json {what} must be 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


# ---- the weights ------------------------------------------------------------------------------------


def _strip_base(state: dict[str, torch.Tensor], base: str) -> dict[str, torch.Tensor]:
    """Keys of a *For...Classification checkpoint without their base-model prefix."""
    prefix = base + "."
    return {k.removeprefix(prefix): v for k, v in state.items()}


# our key (in HFEncoder / its head) <- a function of the upstream state that pops what it uses
Source = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _pop(key: str) -> Source:
    def take(state: dict[str, torch.Tensor]) -> torch.Tensor:
        if key not in state:
            raise HFImportError(f"missing tensor {key!r}")
        return state.pop(key)

    return take


def encoder_sources(p: Plan, servable: Servable) -> dict[str, Source]:
    """Where each encoder tensor comes from (upstream keys without the base prefix)."""
    hf = p.config.hf
    assert hf is not None
    out: dict[str, Source] = {
        "patch_embed.weight": _pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.bias": _pop("embeddings.patch_embeddings.projection.bias"),
    }
    if hf.prefix_tokens:
        names = ["embeddings.cls_token", "embeddings.distillation_token"][: hf.prefix_tokens]
        out["prefix"] = lambda s: torch.cat([_pop(n)(s) for n in names], dim=1)
    if hf.position == "learned":
        out["pos_embed"] = lambda s: _positions(_pop("embeddings.position_embeddings")(s), p.config)
    if hf.final_norm:
        out["norm.weight"], out["norm.bias"] = _pop("layernorm.weight"), _pop("layernorm.bias")
    if hf.pool_norm:
        name = "pooler.layernorm" if p.family == "beit" else "fc_norm"
        out["pool_norm.weight"], out["pool_norm.bias"] = _pop(f"{name}.weight"), _pop(f"{name}.bias")
    if hf.relative_position == "shared":
        out["shared_bias"] = lambda s: _relative_bias(
            _pop("encoder.relative_position_bias.relative_position_bias_table")(s), p.config
        )
    for i in range(p.config.encoder.depth):
        out.update(_layer_sources(p, i))
    return out


def _layer_sources(p: Plan, i: int) -> dict[str, Source]:
    hf = p.config.hf
    assert hf is not None
    up, ours = f"encoder.layer.{i}.", f"blocks.{i}."
    att = up + "attention.attention."
    dim = p.config.encoder.dim

    def qkv_bias(s: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for name, old in (("query", "q_bias"), ("key", None), ("value", "v_bias")):
            key = next((k for k in (f"{att}{name}.bias", f"{att}{old}") if k in s), None)
            if key is None and p.qkv_bias and (name != "key" or p.family not in ("beit", "videomae")):
                raise HFImportError(f"missing tensor {att}{name}.bias")
            parts.append(s.pop(key) if key else torch.zeros(dim))  # BEiT, VideoMAE: no key bias
        return torch.cat(parts)

    dinov2 = p.family == "dinov2"
    norms = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
    mlp = ("mlp.fc1", "mlp.fc2") if dinov2 else ("intermediate.dense", "output.dense")
    out: dict[str, Source] = {
        f"{ours}attn.qkv.weight": lambda s: torch.cat([_pop(f"{att}{n}.weight")(s) for n in QKV]),
        f"{ours}attn.qkv.bias": qkv_bias,
        f"{ours}attn.proj.weight": _pop(f"{up}attention.output.dense.weight"),
        f"{ours}attn.proj.bias": _pop(f"{up}attention.output.dense.bias"),
    }  # fmt: skip
    for j, (ours_norm, ours_mlp) in enumerate((("norm1", "mlp.0"), ("norm2", "mlp.2"))):
        for part in ("weight", "bias"):
            out[f"{ours}{ours_norm}.{part}"] = _pop(f"{up}{norms[j]}.{part}")
            out[f"{ours}{ours_mlp}.{part}"] = _pop(f"{up}{mlp[j]}.{part}")
    if hf.layer_scale:
        scales = ("layer_scale1.lambda1", "layer_scale2.lambda1") if dinov2 else ("lambda_1", "lambda_2")
        out[f"{ours}scale1"], out[f"{ours}scale2"] = _pop(up + scales[0]), _pop(up + scales[1])
    if hf.relative_position == "layer":
        table = f"{att}relative_position_bias.relative_position_bias_table"
        out[f"{ours}bias"] = lambda s: _relative_bias(_pop(table)(s), p.config)
    return out


def head_sources(p: Plan) -> dict[str, Source]:
    """Where the classification head's tensors come from."""
    if p.deit_teacher:  # (W1 c + b1 + W2 d + b2) / 2 = [W1 W2] / 2 (c | d) + (b1 + b2) / 2

        def weight(s: dict[str, torch.Tensor]) -> torch.Tensor:
            w1, w2 = _pop("cls_classifier.weight")(s), _pop("distillation_classifier.weight")(s)
            return torch.cat([w1, w2], dim=1) / 2

        def bias(s: dict[str, torch.Tensor]) -> torch.Tensor:
            return (_pop("cls_classifier.bias")(s) + _pop("distillation_classifier.bias")(s)) / 2

        return {"weight": weight, "bias": bias}
    if p.family == "ast":
        return {
            "0.weight": _pop("classifier.layernorm.weight"), "0.bias": _pop("classifier.layernorm.bias"),
            "1.weight": _pop("classifier.dense.weight"), "1.bias": _pop("classifier.dense.bias"),
        }  # fmt: skip
    return {"weight": _pop("classifier.weight"), "bias": _pop("classifier.bias")}


def _positions(table: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """A learned position table; DINOv2's patch part bicubic-resized to the input's grid, as Hugging Face
    resizes it at run time (float32, align_corners=False), when the sizes differ."""
    hf = cfg.hf
    assert hf is not None
    want = hf.prefix_tokens + cfg.num_patches
    if table.dim() != 3 or table.shape[1] == want or hf.family != "dinov2":
        return table
    prefix, patches = table[:, : hf.prefix_tokens], table[:, hf.prefix_tokens :]
    side = round(patches.shape[1] ** 0.5)
    if side * side != patches.shape[1]:
        raise HFImportError(f"position_embeddings has {patches.shape[1]} patch positions, not a square grid")
    grid = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # (1, D, side, side)
    resized = torch.nn.functional.interpolate(grid, size=hf.grid, mode="bicubic", align_corners=False)
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).reshape(1, cfg.num_patches, -1)], dim=1)


def _relative_bias(table: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """BEiT's bias table (distances + 3 cls entries, heads) -> the bias of every token pair (heads, T, T)."""
    wh, ww = cfg.grid
    distances = (2 * wh - 1) * (2 * ww - 1)
    if table.dim() != 2 or table.shape[0] != distances + 3:
        raise HFImportError(
            f"relative_position_bias_table has shape {tuple(table.shape)}, expected ({distances + 3}, heads)"
        )
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1  # (N, N)
    n = wh * ww + 1
    full = torch.zeros(n, n, dtype=torch.long)
    full[1:, 1:] = index
    full[0, :] = distances  # cls -> token
    full[:, 0] = distances + 1  # token -> cls
    full[0, 0] = distances + 2
    return table[full.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()  # (heads, T, T)


def _fill(
    module: torch.nn.Module, sources: dict[str, Source], state: dict[str, torch.Tensor], what: str
) -> None:
    """Build the module's state from `sources` (popping from `state`), check shapes, load it."""
    own = module.state_dict()
    new: dict[str, torch.Tensor] = {}
    problems = []
    for key, source in sources.items():
        try:
            value = source(state).float()
        except HFImportError as e:
            problems.append(str(e))
            continue
        if key not in own:
            raise HFImportError(f"internal: {what} has no tensor {key!r}")
        if tuple(value.shape) != tuple(own[key].shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        new[key] = value
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise HFImportError(
            f"{WEIGHTS_FILE} does not match config.json ({what}): " + "; ".join(problems[:10]) + more
        )
    module.load_state_dict(new, strict=False)
    missing = [k for k in own if k not in new and k in dict(module.named_parameters())]
    if missing:
        raise HFImportError(f"internal: {what} parameters left unfilled: {missing[:5]}")
    bad = [k for k, v in new.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise HFImportError(f"{WEIGHTS_FILE}: {bad[:5]} hold non-finite values")


def labels_of(config: dict[str, Any], num_classes: int) -> list[str]:
    """`id2label` in class order; a name shared by several classes gets " (index)" appended."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or sorted(id2label, key=str) != sorted(map(str, range(num_classes))):
        raise HFImportError(
            f"config.json id2label must name the {num_classes} classes of the classifier "
            f"(keys 0..{num_classes - 1})"
        )
    names = [str(id2label[str(i)]) for i in range(num_classes)]
    seen = {n: names.count(n) for n in names}
    return [f"{n} ({i})" if seen[n] > 1 else n for i, n in enumerate(names)]


# ---- the import ------------------------------------------------------------------------------------


def import_hf(checkpoint: str | os.PathLike[str], clip_seconds: float = 2.0) -> Servable:
    """A servable model from a Hugging Face model folder (see the module docstring)."""
    folder = read_folder(checkpoint)
    p = plan(folder, clip_seconds)
    state = _strip_base(folder.state, FAMILIES[folder.config["model_type"]][1])
    labels: list[str] = []
    if p.has_head:
        head = state.get(
            "cls_classifier.weight", state.get("classifier.weight", state.get("classifier.dense.weight"))
        )
        if head is None or head.dim() != 2:
            raise HFImportError(f"{WEIGHTS_FILE}: the classifier weight is missing or not a matrix")
        labels = labels_of(folder.config, int(head.shape[0]))
    provenance: dict[str, Any] = {
        "source": f"Hugging Face {folder.config['model_type']} model folder {folder.path.name}",
        "name_or_path": folder.config.get("_name_or_path"),
        "architectures": folder.config.get("architectures"),
        "imported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_checkpoint": {"file": WEIGHTS_FILE, "sha256": sha256_file(folder.path / WEIGHTS_FILE)},
        "preprocessing": preprocessing_of(p.config),
        "licence": "see the model card of the source (not recorded in the folder)",
    }
    servable = build_servable(p.config, labels, tokenizer_kind="random", provenance=provenance)
    _fill(servable.encoder, encoder_sources(p, servable), state, "encoder")
    if servable.classifier is not None:
        _fill(servable.classifier, head_sources(p), state, "classification head")
    dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
    unknown = sorted(k for k in state if k not in dropped)
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise HFImportError(
            f"{WEIGHTS_FILE} holds {len(unknown)} tensor(s) this {p.family} config does not use: "
            + ", ".join(unknown[:10])
            + more
        )
    servable.provenance["dropped_tensors"] = sorted({k.split(".")[0] for k in dropped})
    return servable.eval()


def preprocessing_of(config: ModelConfig) -> str:
    """What the model's input preprocessing follows, in words (the provenance's, and the CLI's line)."""
    inp = config.input
    if isinstance(inp, AudioInput):
        return (
            f"ASTFeatureExtractor: {inp.num_mel_bins}-bin Kaldi fbank at {inp.sample_rate} Hz, "
            f"{inp.num_frames} frames (a shorter clip padded with zero frames), "
            f"mean {inp.mean:g}, std {inp.std:g}"
        )
    processing = inp.processing
    assert processing is not None
    if processing.resize == "squash":
        geometry = f"resize to {processing.size[0]} x {processing.size[1]}"
    else:
        geometry = f"resize the shorter side to {processing.size[0]}"
    geometry += f" ({processing.resample})"
    if processing.crop is not None:
        geometry += f", centre crop {processing.crop[0]} x {processing.crop[1]}"
    if processing.convert_rgb:
        geometry += ", transparency over white"
    if isinstance(inp, VideoInput):
        geometry += (
            f"; {inp.num_frames} frames per {inp.clip_seconds:g} s clip, frame i * n // {inp.num_frames}"
        )
    return f"{processing.source}: {geometry}"


def write_import(
    out: str | os.PathLike[str], checkpoint: str | os.PathLike[str], clip_seconds: float = 2.0
) -> Servable:
    """Import and save the servable checkpoint `out` (atomically)."""
    servable = import_hf(checkpoint, clip_seconds)
    save_servable(out, servable)
    return servable


# ---- the command line ------------------------------------------------------------------------------------


@importer_family("hf", "--checkpoint HF_MODEL_DIR --out DIR [--clip-seconds 2.0] [--force]", HFImportError)
def hf_command(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="Hugging Face model folder (config.json + model.safetensors [+ preprocessor_config.json]) "
            "of a ViT, DeiT, BEiT, DINOv2, VideoMAE or AST model"
        ),
    ],
    out: Out,
    clip_seconds: Annotated[
        float, typer.Option(help="video: seconds of video the model's frames are sampled from")
    ] = 2.0,
    force: Force = False,
) -> None:
    """Import a Hugging Face image, video or audio transformer as a servable checkpoint in OUT."""
    servable = write_import(out, checkpoint, clip_seconds)
    assert servable.config.hf is not None
    cfg = servable.config
    head = f"{len(servable.labels)} labels ({cfg.classifier_activation})" if servable.labels else "no head"
    typer.echo(
        f"wrote {out}: {cfg.hf.family} {cfg.modality} encoder {cfg.encoder.depth} x {cfg.encoder.dim}, "
        f"patch grid {list(cfg.grid)}, {head}, tokenizer {servable.tokenizer_kind}"
    )
    typer.echo(f"preprocessing: {servable.provenance['preprocessing']}")
