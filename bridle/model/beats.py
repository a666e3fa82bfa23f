"""BEATs networks (Chen et al. 2022, microsoft/unilm `beats/`), for serving imported BEATs checkpoints.

A BEATs backbone differs from BRIDLE's ViT (`transformer.py`) in five ways:

    fbank (B, 1, frames, 128) -> conv p x p (no bias) -> (B, N, embed_dim) -> LayerNorm -> Linear -> (B, N, D)
        -> x + GELU(grouped Conv1d over the token sequence)        (convolutional positions, no sin-cos)
        -> LayerNorm -> post-LN blocks:                           (no cls token)
               x = LN(alpha x + Attn(x, gate(q) * bias))          (gated relative position bias)
               x = LN(alpha x + MLP(x))                           (deep norm: alpha = (2 depth)^(1/4))
        -> (B, N, D), pooled by the mean over tokens

Tokens are numbered row-major over the (time, mel) patch grid, as `patches.py` numbers them, and the
relative position of two tokens is the difference of their indices in that sequence. The distance buckets
(exact for small distances, log-spaced up to `max_distance`) depend only on the fixed window, so they are
computed once here, as a buffer: the exported graph only gathers from the bias table and has no log.

`BeatsEncoder` (E), `BeatsTokenizer` (T: backbone -> Linear-Tanh-Linear -> l2-normalise -> a one-level
`ResidualQuantizer`, i.e. BEATs' single VQ codebook) and a linear classifier head (BEATs averages the
per-token logits, which equals the linear map of the mean token) are what `checkpoint.py` builds for a
`ModelConfig` whose `beats` is set. `bridle/importers/beats.py` fills them from upstream checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bridle.model.config import AudioInput, BeatsBackboneConfig, ModelConfig, ViTConfig
from bridle.model.quantizer import ResidualQuantizer
from bridle.model.tokenizer import TokenizerOutput

# BEATs' fbank: 128 Kaldi mel bins of the waveform x 2^15 with a povey window, normalised by these
# statistics (its `preprocess` defaults) as (x - mean) / (2 std).
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
NUM_MEL_BINS = 128
NUM_FRAMES = 992  # frames per service window: 62 x 8 patches of 16, 9.935 s of 16 kHz audio
LAYER_NORM_EPS = 1e-5  # torch's default, which BEATs uses everywhere


def beats_audio_input(num_frames: int = NUM_FRAMES) -> AudioInput:
    """The `AudioInput` that reproduces BEATs' preprocessing for windows of `num_frames` frames."""
    return AudioInput(
        num_mel_bins=NUM_MEL_BINS, window="povey", num_frames=num_frames, mean=FBANK_MEAN, std=FBANK_STD
    )


def check_backbone(vit: ViTConfig, beats: BeatsBackboneConfig) -> None:
    """Raise ValueError naming every setting a `BeatsBackbone` cannot be built with."""
    problems = []
    if vit.dim % vit.heads:
        problems.append(f"dim {vit.dim} is not divisible by heads {vit.heads}")
    if vit.dim % beats.conv_pos_groups:
        problems.append(f"dim {vit.dim} is not divisible by conv_pos_groups {beats.conv_pos_groups}")
    if beats.conv_pos < 1:
        problems.append(f"conv_pos must be >= 1, got {beats.conv_pos}")
    if beats.relative_position:
        if beats.num_buckets < 4 or beats.num_buckets % 2:
            problems.append(f"num_buckets must be even and >= 4, got {beats.num_buckets}")
        elif beats.max_distance <= beats.num_buckets // 4:
            problems.append(
                f"max_distance {beats.max_distance} must exceed num_buckets / 4 = {beats.num_buckets // 4}"
            )
    if problems:
        raise ValueError("; ".join(problems))


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of every (query, key) pair of a `length`-token sequence -> (length, length) int64.

    Half the buckets are for keys after the query, half for keys before or at it. Within a half, distances
    below a quarter of `num_buckets` have a bucket each; larger ones share log-spaced buckets up to
    `max_distance`, and farther ones the last. The log is taken in float32 as BEATs takes it (the bucket
    is its truncation), and only of distances >= 1.
    """
    half = num_buckets // 2
    exact = half // 2
    position = torch.arange(length)
    relative = position[None, :] - position[:, None]  # (L, L): key - query
    distance = relative.abs()
    scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (scaled * (half - exact)).long()).clamp(max=half - 1)
    return (relative > 0).long() * half + torch.where(distance < exact, distance, far)


class BeatsAttention(nn.Module):
    """Multi-head self-attention whose logits get the shared relative position bias, scaled per query by
    a gate: g = a (b * s_h - 1) + 2 with (a, b) = sigmoid(Linear(q_h)) and s_h a learned per-head scale."""

    def __init__(self, dim: int, heads: int, gated: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim // heads, 2) if gated else None
        self.gate_scale = nn.Parameter(torch.ones(1, heads, 1, 1)) if gated else None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D), bias (heads, N, N) or None -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, N, d_head)
        if bias is not None and self.gate is not None and self.gate_scale is not None:
            a, g = torch.sigmoid(self.gate(q)).chunk(2, dim=-1)  # each (B, heads, N, 1)
            bias = (a * (g * self.gate_scale - 1.0) + 2.0) * bias  # (B, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, N, d_head)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class BeatsBlock(nn.Module):
    """Post-LN block: x = LN(alpha x + Attn(x)), then x = LN(alpha x + MLP(x))."""

    def __init__(self, vit: ViTConfig, gated: bool, alpha: float) -> None:
        super().__init__()
        hidden = int(vit.dim * vit.mlp_ratio)
        self.alpha = alpha
        self.attn = BeatsAttention(vit.dim, vit.heads, gated)
        self.norm1 = nn.LayerNorm(vit.dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(vit.dim, hidden), nn.GELU(), nn.Linear(hidden, vit.dim))
        self.norm2 = nn.LayerNorm(vit.dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(self.alpha * x + self.attn(x, bias))
        return self.norm2(self.alpha * x + self.mlp(x))


class BeatsBackbone(nn.Module):
    """(B, 1, frames, mel) normalised fbank -> (B, N, D) token features (see the module docstring)."""

    buckets: torch.Tensor

    def __init__(self, cfg: ModelConfig, vit: ViTConfig, beats: BeatsBackboneConfig) -> None:
        super().__init__()
        check_backbone(vit, beats)
        p = cfg.patch_size
        self.patch_embed = nn.Conv2d(1, beats.embed_dim, p, p, bias=beats.conv_bias)
        self.patch_norm = nn.LayerNorm(beats.embed_dim, eps=LAYER_NORM_EPS)
        self.patch_proj = nn.Linear(beats.embed_dim, vit.dim) if beats.embed_dim != vit.dim else nn.Identity()
        self.pos_conv = nn.Conv1d(
            vit.dim, vit.dim, beats.conv_pos, padding=beats.conv_pos // 2, groups=beats.conv_pos_groups
        )
        self.trim = 1 - beats.conv_pos % 2  # an even kernel gives one output too many: drop the last
        self.norm = nn.LayerNorm(vit.dim, eps=LAYER_NORM_EPS)
        # the bias of each distance bucket, per head (a table indexed in forward, not an nn.Embedding:
        # the exporter would name its output "embedding", the name of the graph's pooled output)
        self.position_bias = (
            nn.Parameter(torch.zeros(beats.num_buckets, vit.heads)) if beats.relative_position else None
        )
        buckets = relative_position_buckets(cfg.num_patches, beats.num_buckets, beats.max_distance)
        self.register_buffer("buckets", buckets, persistent=False)  # (N, N)
        alpha = (2.0 * vit.depth) ** 0.25 if beats.deep_norm else 1.0
        gated = beats.relative_position and beats.gated_position_bias
        self.blocks = nn.ModuleList(BeatsBlock(vit, gated, alpha) for _ in range(vit.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, embed_dim, T', F') -> (B, N, embed_dim)
        tokens = self.patch_proj(self.patch_norm(tokens))  # (B, N, D)
        positions = self.pos_conv(tokens.transpose(1, 2))  # (B, D, N + trim)
        if self.trim:
            positions = positions[:, :, :-1]
        x = self.norm(tokens + F.gelu(positions).transpose(1, 2))  # (B, N, D)
        bias = None
        if self.position_bias is not None:
            bias = self.position_bias[self.buckets].permute(2, 0, 1)  # (N, N, heads) -> (heads, N, N)
        for block in self.blocks:
            x = block(x, bias)
        return x


class BeatsEncoder(nn.Module):
    """E of an imported BEATs model: `features(x) -> (B, N, D)`, `pooled(x) -> (B, D)` (mean of tokens).

    No masking and no cls token: it serves, it is not pretrained here.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.beats is None:
            raise ValueError("a BeatsEncoder needs a config with `beats` set")
        self.cfg = cfg
        self.dim = cfg.encoder.dim
        self.backbone = BeatsBackbone(cfg, cfg.encoder, cfg.beats.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=1)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` (B, N, D) and `pooled` (B, D) from one pass."""
        patches = self.backbone(x)
        return patches, patches.mean(dim=1)


class BeatsTokenizer(nn.Module):
    """T of an imported BEATs model: backbone -> Linear-Tanh-Linear -> l2-normalise -> one VQ codebook
    (a one-level `ResidualQuantizer`; the codewords are unit vectors, so the nearest in direction is
    BEATs' nearest in distance)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.beats is None or cfg.beats.tokenizer is None:
            raise ValueError("a BeatsTokenizer needs a config with `beats.tokenizer` set")
        if cfg.quantizer.levels != 1:
            raise ValueError(f"a BEATs tokenizer has one codebook, the config has {cfg.quantizer.levels}")
        dim = cfg.tokenizer.dim
        self.backbone = BeatsBackbone(cfg, cfg.tokenizer, cfg.beats.tokenizer)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, cfg.quantizer.dim))
        self.quantizer = ResidualQuantizer(cfg.quantizer)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The unit vectors to quantize -> (B, N, code_dim)."""
        return F.normalize(self.head(self.backbone(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        out = self.quantizer(self.embed(x))
        return TokenizerOutput(codes=out.codes, quantized=out.quantized, loss=out.loss)


def build_beats_networks(
    cfg: ModelConfig, num_classes: int, trained_tokenizer: bool
) -> tuple[BeatsEncoder, BeatsTokenizer | None, nn.Linear | None]:
    """E, T (None when the tokenizer is not a BEATs one) and the linear head (None without classes)."""
    encoder = BeatsEncoder(cfg)
    tokenizer = BeatsTokenizer(cfg) if trained_tokenizer else None
    classifier = nn.Linear(cfg.encoder.dim, num_classes) if num_classes else None
    return encoder, tokenizer, classifier
