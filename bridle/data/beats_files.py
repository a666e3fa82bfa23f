"""Small BEATs checkpoints in upstream's file layout, every tensor seeded-random, for the importer's tests and
bench.beats."""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridle.data.reference_beats import BEATs, Config, Tokenizers

# Small, but every code path of bridle/model/beats.py: a projection after the stem, deep norm, gated
# bias with distances in the exact, the log-spaced and the clamped buckets (32 tokens, 16 buckets, max
# distance 20), an even positional kernel (trimmed); the tokenizer: no projection, a conv bias, no deep
# norm, an odd kernel, plain (ungated) bias.
MODEL_CFG: dict[str, Any] = {
    "input_patch_size": 16, "embed_dim": 24, "encoder_layers": 2, "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "deep_norm": True, "conv_pos": 8,
    "conv_pos_groups": 4, "relative_position_embedding": True, "num_buckets": 16, "max_distance": 20,
    "gru_rel_pos": True, "layer_wise_gradient_decay_ratio": 0.6, "dropout": 0.0, "finetuned_model": True,
    "predictor_class": 7, "predictor_dropout": 0.0,
}  # fmt: skip
TOKENIZER_CFG: dict[str, Any] = {
    "input_patch_size": 16, "embed_dim": 48, "conv_bias": True, "encoder_layers": 1,
    "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 3, "conv_pos": 5,
    "conv_pos_groups": 3, "relative_position_embedding": True, "num_buckets": 16, "max_distance": 20,
    "quant_n": 32, "quant_dim": 16,
}  # fmt: skip
# label_dict maps class index -> name; its insertion order is deliberately not the index order
LABEL_DICT = {6: "Speech", 0: "Dog", 3: "Siren", 1: "Music", 5: "Rain", 2: "Bird", 4: "Engine"}
LABELS = [LABEL_DICT[i] for i in range(7)]
# as a real AudioSet head's label_dict: class index -> mid (the real mids of the classes above); with
# AudioSet's class_labels_indices.csv (`write_class_labels`) the labels become the names again
MIDS = ["/m/0bt9lr", "/m/04rlf", "/m/015p6", "/m/03kmc9", "/m/02mk9", "/m/06mb1", "/m/09x0r"]
MID_DICT = dict(enumerate(MIDS))
NUM_FRAMES = 64  # 4 x 8 patches of 16: a 0.655 s window


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter and float buffer seeded-random at a scale that keeps activations sane, so a wrong
    mapping cannot hide behind a default value (ones, zeros)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in [*module.named_parameters(), *module.named_buffers()]:
        if not p.is_floating_point() or name.endswith("initted"):
            continue
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("embedding.weight") and "quantize" in name:
            p.copy_(torch.nn.functional.normalize(noise, dim=-1))  # BEATs' codewords are unit vectors
        elif name.endswith(("grep_a", "weight_g")) or ("norm" in name and name.endswith("weight")):
            p.copy_(1.0 + 0.3 * noise)
        elif p.dim() >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:
            p.copy_(0.3 * noise)


def make_model(seed: int = 1, cfg: dict[str, Any] | None = None) -> BEATs:
    model = BEATs(Config(cfg or MODEL_CFG)).eval()
    randomise(model, seed)
    return model


def make_tokenizer(seed: int = 2, cfg: dict[str, Any] | None = None) -> Tokenizers:
    tokenizer = Tokenizers(Config(cfg or TOKENIZER_CFG)).eval()
    randomise(tokenizer, seed)
    return tokenizer


def save_upstream(path: Path, module: torch.nn.Module, cfg: dict[str, Any], **extra: Any) -> Path:
    """torch.save in upstream's layout: {"cfg", "model"[, "label_dict"]}."""
    torch.save({"cfg": dict(cfg), "model": module.state_dict(), **extra}, path)
    return path


def write_class_labels(
    path: Path, rows: list[list[str]] | None = None, header: str = "index,mid,display_name"
) -> Path:
    """A class_labels_indices.csv in AudioSet's layout (names quoted, as AudioSet's are); by default the
    classes of `MID_DICT`, in a shuffled row order."""
    rows = rows if rows is not None else [[str(i), MIDS[i], LABELS[i]] for i in (3, 0, 6, 1, 5, 2, 4)]
    lines = [header, *(f'{i},{mid},"{name}"' for i, mid, name in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wav16(signal: np.ndarray, sample_rate: int = 16_000) -> bytes:
    """`signal` (samples,) in [-1, 1] as a mono 16-bit wav."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()
