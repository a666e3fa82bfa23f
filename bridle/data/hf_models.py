"""Hugging Face model folders with seeded random weights, written by `transformers` itself, and its reference
outputs: the input of each model's classification head and its logits. Used by the parity tests and
`bench/hf.py`; needs the `import` extra (transformers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

NUM_LABELS = 5
LABELS = ["dog", "cat", "crane", "crane", "bird"]  # one duplicate name, as ImageNet's two "crane"s
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# ViT-S width and depth at the demo digits' own size (size "vit-s-32": 32 px in 4 px patches, an 8 x 8 grid)
VIT_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536}
FAMILIES = ("vit", "deit", "deit-teacher", "dinov2", "beit", "videomae", "ast")


@dataclass(frozen=True)
class Spec:
    """How to build one family's model: config class, model class, config fields, processor."""

    config: str
    model: str
    fields: dict[str, Any]
    processor: Callable[[], Any]


def _specs(size: str) -> dict[str, Spec]:
    import transformers as T

    small = size == "small"
    common = {"small": SMALL, "vit-s-32": VIT_S}.get(size, {})
    image = {
        "small": {"image_size": 32, "patch_size": 8},
        "vit-s-32": {"image_size": 32, "patch_size": 4},
    }.get(size, {"image_size": 224, "patch_size": 16})
    s = image["image_size"]
    square = {"height": s, "width": s}
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    # each family's processor as its Hub reference model ships it (google/vit-base-patch16-224: squash,
    # bilinear; facebook/deit-base-distilled-patch16-224: 256 x 256 bicubic, 224 crop; microsoft/beit-
    # base-patch16-224: squash, bilinear; facebook/dinov2-small: shorter side 256 bicubic, 224 crop, RGB;
    # MCG-NJU/videomae-base-finetuned-kinetics: shorter side 224 bilinear, 224 crop), at this size
    deit_resize = {"height": s * 256 // 224, "width": s * 256 // 224}
    return {
        "vit": Spec(
            "ViTConfig", "ViTForImageClassification", {**common, **image},
            lambda: T.ViTImageProcessor(size=square),
        ),
        "deit": Spec(
            "DeiTConfig", "DeiTForImageClassification", {**common, **image},
            lambda: T.DeiTImageProcessor(size=deit_resize, crop_size=square, **imagenet),
        ),
        "deit-teacher": Spec(
            "DeiTConfig", "DeiTForImageClassificationWithTeacher", {**common, **image},
            lambda: T.DeiTImageProcessor(size=deit_resize, crop_size=square, **imagenet),
        ),
        # trained at a larger size than it serves: the position table is resized, as DINOv2 does
        "dinov2": Spec(
            "Dinov2Config", "Dinov2ForImageClassification",
            {**common, "image_size": 48 if small else 518, "patch_size": 8 if small else 14},
            lambda: T.BitImageProcessor(
                size={"shortest_edge": s * 256 // 224}, crop_size={"height": 32 if small else 224,
                                                          "width": 32 if small else 224},
                do_center_crop=True, do_convert_rgb=True, **imagenet,
            ),
        ),
        "beit": Spec(
            "BeitConfig", "BeitForImageClassification",
            {**common, **image, "use_relative_position_bias": True, "layer_scale_init_value": 0.1},
            lambda: T.BeitImageProcessor(
                size=square, do_center_crop=False, resample=T.image_utils.PILImageResampling.BILINEAR
            ),
        ),
        "videomae": Spec(
            "VideoMAEConfig", "VideoMAEForVideoClassification",
            {**common, **image, "num_frames": 4 if small else 16, "tubelet_size": 2},
            lambda: T.VideoMAEImageProcessor(size={"shortest_edge": s}, crop_size=square, **imagenet),
        ),
        "ast": Spec(
            "ASTConfig", "ASTForAudioClassification",
            {**common, "num_mel_bins": 32, "max_length": 64, "patch_size": 8, "frequency_stride": 4,
             "time_stride": 6} if small else {},
            # statistics other than the defaults, so the test sees them read from the file
            lambda: T.ASTFeatureExtractor(
                num_mel_bins=32 if small else 128, max_length=64 if small else 1024, mean=-5.0, std=4.0
            ),
        ),
    }  # fmt: skip


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights everywhere (Hugging Face's init leaves biases, tokens and norms trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif "lambda" in name:
                p.copy_(0.5 + 0.1 * noise)
            elif "token" in name or "position" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.05 * noise if p.dim() > 1 else 0.1 * noise)


def make_folder(
    family: str, root: Path, size: str = "small", head: bool = True, seed: int = 0, num_labels: int = 0
) -> Path:
    """Write a model folder (config.json, model.safetensors, preprocessor_config.json) for `family`
    ("small", "base", or "vit-s-32" size); its head has `LABELS`, or `num_labels` classes named "class i"."""
    import transformers as T

    spec = _specs(size)[family]
    fields = dict(spec.fields)
    if head:
        labels = [f"class {i}" for i in range(num_labels)] if num_labels else LABELS
        fields["id2label"] = dict(enumerate(labels))
        fields["label2id"] = {name: i for i, name in enumerate(labels)}
    config = getattr(T, spec.config)(**fields)
    model_cls = spec.model if head else spec.model.split("For")[0] + "Model"
    torch.manual_seed(seed)
    model = getattr(T, model_cls)(config).eval()
    perturb(model, seed)
    out = root / f"{family}{'' if head else '-headless'}"
    model.save_pretrained(out)
    spec.processor().save_pretrained(out)
    return out


def load_model(folder: Path) -> torch.nn.Module:
    """The folder's model in transformers, eval mode."""
    import transformers as T

    config = T.AutoConfig.from_pretrained(folder)
    arch = config.architectures[0]
    return getattr(T, arch).from_pretrained(folder).eval()


def sample_input(family: str, folder: Path, batch: int, seed: int = 0) -> np.ndarray:
    """What the service feeds the graph: uint8 images (B, 3, S, S) / clips (B, T, 3, S, S), or float32
    waveforms (B, samples) exactly one window long."""
    import transformers as T

    rng = np.random.default_rng(seed)
    config = T.AutoConfig.from_pretrained(folder)
    if family == "ast":
        frames = config.max_length
        samples = (frames - 1) * 160 + 400
        t = np.arange(samples) / 16_000
        tones = np.sin(2 * np.pi * rng.uniform(100, 4000, (batch, 1)) * t[None])
        return (0.3 * tones + 0.05 * rng.standard_normal((batch, samples))).astype(np.float32)
    proc = T.AutoImageProcessor.from_pretrained(folder)
    crop = proc.crop_size if getattr(proc, "do_center_crop", False) else proc.size
    s = crop.get("height", crop.get("shortest_edge"))
    shape = (batch, config.num_frames, 3, s, s) if family == "videomae" else (batch, 3, s, s)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def reference(
    family: str, folder: Path, model: torch.nn.Module, signal: np.ndarray
) -> tuple[np.ndarray, ...]:
    """transformers' own forward on `signal`, run through the folder's processor without resizing:
    (the input of the classification head (B, E), logits (B, C))."""
    import transformers as T

    if family == "ast":
        fe = T.ASTFeatureExtractor.from_pretrained(folder)
        inputs = {"input_values": fe(list(signal), sampling_rate=16_000, return_tensors="pt")["input_values"]}
    else:
        proc = T.AutoImageProcessor.from_pretrained(folder)
        keep = {"do_resize": False, "do_center_crop": False, "return_tensors": "pt"}
        if family == "videomae":
            videos = [list(clip.transpose(0, 2, 3, 1)) for clip in signal]  # (T, H, W, 3) frames
            inputs = {"pixel_values": proc(videos, **keep)["pixel_values"]}
        else:
            inputs = {"pixel_values": proc(list(signal.transpose(0, 2, 3, 1)), **keep)["pixel_values"]}
    heads = (
        [model.cls_classifier, model.distillation_classifier]
        if hasattr(model, "cls_classifier")
        else [model.classifier]
    )
    seen: list[torch.Tensor] = []
    hooks = [h.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for h in heads]
    with torch.no_grad():
        logits = model(**inputs).logits
    for hook in hooks:
        hook.remove()
    head_input = torch.cat(seen, dim=-1) if len(seen) > 1 else seen[0]
    return head_input.numpy(), logits.numpy()
