"""A port of microsoft/unilm `beats/` (BEATs.py, backbone.py, quantizer.py, Tokenizers.py): the eval-mode
forward pass only, with upstream's module names, so its `state_dict()` has upstream's checkpoint layout.

It follows upstream's computation step by step, where `bridle/model/beats.py` folds and fuses: time-major
tensors, separate q/k/v projections, the query pre-divided by alpha = 32 and the logits' row maximum
subtracted, the positional conv under `torch.nn.utils.weight_norm` followed by a same-pad trim, buckets
from a log over every distance (upstream's log(0) included, discarded by its `where`), the 8-way gate summed
in pairs of 4, the bias computed by layer 0 and handed on, one bias table shared by every layer, per-token
logits averaged. Dropout and layer drop are left out (eval mode). The fbank is a float64 numpy stand-in
for `torchaudio.compliance.kaldi.fbank` (torchaudio does not install beside torch 2.13).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bridle.importers.beats import MODEL_DEFAULTS, TOKENIZER_DEFAULTS

# upstream's config defaults (BEATsConfig / TokenizersConfig), as the importer reads them
DEFAULTS: dict[str, Any] = {**MODEL_DEFAULTS, **TOKENIZER_DEFAULTS}


class Config:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.__dict__.update(DEFAULTS)
        self.__dict__.update(cfg)


class SelfAttention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        dim, self.num_heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.has_relative_attention_bias = cfg.relative_position_embedding
        if self.has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.num_heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def _bucket(self, relative: torch.Tensor) -> torch.Tensor:
        num_buckets = self.num_buckets // 2
        buckets = (relative > 0).to(torch.long) * num_buckets
        relative = torch.abs(relative)
        max_exact = num_buckets // 2
        is_small = relative < max_exact
        large = max_exact + (
            torch.log(relative.float() / max_exact)
            / math.log(self.max_distance / max_exact)
            * (num_buckets - max_exact)
        ).to(torch.long)
        large = torch.min(large, torch.full_like(large, num_buckets - 1))
        return buckets + torch.where(is_small, relative, large)

    def compute_bias(self, length: int) -> torch.Tensor:
        context = torch.arange(length, dtype=torch.long)[:, None]
        memory = torch.arange(length, dtype=torch.long)[None, :]
        values = self.relative_attention_bias(self._bucket(memory - context))  # (L, L, H)
        return values.permute([2, 0, 1])

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        tgt_len, bsz, dim = x.size()  # time-major
        if self.has_relative_attention_bias and position_bias is None:
            position_bias = self.compute_bias(tgt_len)
            position_bias = position_bias.unsqueeze(0).repeat(bsz, 1, 1, 1)
            position_bias = position_bias.view(bsz * self.num_heads, tgt_len, tgt_len)
        alpha = 32
        q = self.q_proj(x) * self.scaling * (1 / alpha)
        k = self.k_proj(x)
        v = self.v_proj(x)
        q = q.contiguous().view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = k.contiguous().view(-1, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        weights = torch.bmm(q, k.transpose(1, 2))
        weights = (weights - weights.max(dim=-1, keepdim=True)[0]) * alpha
        if position_bias is not None:
            bias = position_bias
            if self.gru_rel_pos:
                query = q.view(bsz, self.num_heads, tgt_len, self.head_dim) * alpha / self.scaling
                gates = self.grep_linear(query).view(bsz, self.num_heads, tgt_len, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0
                bias = gate.view(bsz * self.num_heads, tgt_len, 1) * position_bias
            weights = weights + bias.view(weights.size())
        probs = F.softmax(weights, dim=-1)
        out = torch.bmm(probs, v).transpose(0, 1).contiguous().view(tgt_len, bsz, dim)
        return self.out_proj(out), position_bias


class EncoderLayer(nn.Module):
    """Upstream's post-LN branch (layer_norm_first=False), with or without deep norm."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = SelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.deep_norm_alpha = math.pow(2 * cfg.encoder_layers, 1 / 4) if cfg.deep_norm else 1

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        residual = x
        x, pos_bias = self.self_attn(x, pos_bias)
        x = self.self_attn_layer_norm(residual * self.deep_norm_alpha + x)
        residual = x
        x = self.fc2(F.gelu(self.fc1(x).float()).type_as(x))
        x = self.final_layer_norm(residual * self.deep_norm_alpha + x)
        return x, pos_bias


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        assert not cfg.layer_norm_first, "the port covers post-LN BEATs only"
        dim = cfg.encoder_embed_dim
        conv = nn.Conv1d(dim, dim, cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # weight_norm is deprecated; upstream (and its checkpoints) use it
            conv = nn.utils.weight_norm(conv, name="weight", dim=2)
        self.pos_conv = nn.Sequential(conv)
        self.same_pad_remove = 1 if cfg.conv_pos % 2 == 0 else 0
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.relative_position_embedding:
            for i in range(1, cfg.encoder_layers):
                del self.layers[i].self_attn.relative_attention_bias
                self.layers[i].self_attn.relative_attention_bias = self.layers[
                    0
                ].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_conv = self.pos_conv(x.transpose(1, 2))
        if self.same_pad_remove:
            x_conv = x_conv[:, :, : -self.same_pad_remove]
        x = x + F.gelu(x_conv).transpose(1, 2)
        x = self.layer_norm(x)
        x = x.transpose(0, 1)  # B x T x C -> T x B x C
        pos_bias = None
        for layer in self.layers:
            x, pos_bias = layer(x, pos_bias)
        return x.transpose(0, 1)


class Backbone(nn.Module):
    """What BEATs and Tokenizers share: patch conv, LayerNorm, projection, transformer."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
            if cfg.embed_dim != cfg.encoder_embed_dim
            else None
        )
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)

    def backbone(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank (B, T, 128), already normalised -> (B, N, D)."""
        features = self.patch_embedding(fbank.unsqueeze(1))
        features = features.reshape(features.shape[0], features.shape[1], -1).transpose(1, 2)
        features = self.layer_norm(features)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        return self.encoder(features)


class BEATs(Backbone):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.predictor = (
            nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None
        )

    def extract_features(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> features (B, N, D), logits (B, C) or None; upstream returns sigmoid(logits)."""
        x = self.backbone(fbank)
        logits = self.predictor(x).mean(dim=1) if self.predictor is not None else None
        return x, logits


class EmbeddingEMA(nn.Module):
    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.Tensor([True]))
        self.weight = nn.Parameter(torch.zeros(num_tokens, dim), requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_tokens), requires_grad=False)
        self.embed_avg = nn.Parameter(torch.zeros(num_tokens, dim), requires_grad=False)


class NormEMAVectorQuantizer(nn.Module):
    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.embedding = EmbeddingEMA(num_tokens, dim)
        self.register_buffer("cluster_size", torch.zeros(num_tokens))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(z, p=2, dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        w = self.embedding.weight
        d = (
            flat.pow(2).sum(dim=1, keepdim=True)
            + w.pow(2).sum(dim=1)
            - 2 * torch.einsum("bd,nd->bn", flat, w)
        )
        index = torch.argmin(d, dim=1)
        return F.embedding(index, w).view(z.shape), index


class Tokenizers(Backbone):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.quantize = NormEMAVectorQuantizer(cfg.quant_n, cfg.quant_dim)
        dim = cfg.encoder_embed_dim
        self.quantize_layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, cfg.quant_dim))

    def extract_labels(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> codes (B, N), quantized (B, N, quant_dim)."""
        x = self.backbone(fbank)
        quantized, index = self.quantize(self.quantize_layer(x))
        return index.view(x.shape[0], -1), quantized


# ---- fbank stand-in ---------------------------------------------------------------------------------


def kaldi_fbank(wave: np.ndarray, num_mel_bins: int = 128) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank(wave[None] * 2**15, num_mel_bins, 16 kHz, 25 ms, 10 ms) with its
    defaults (povey window, pre-emphasis 0.97, DC removal, power, log, low 20 Hz, snip_edges), in float64
    with numpy's FFT; mel bands that hold no FFT bin get energy 0, hence log(float32 eps), as in torchaudio.
    -> (frames, num_mel_bins) float64."""
    x = wave.astype(np.float64) * 2**15
    length, shift, padded, rate = 400, 160, 512, 16_000
    n = 1 + (len(x) - length) // shift
    frames = np.stack([x[i * shift : i * shift + length] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    povey = (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(length) / (length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(emphasised * povey, n=padded)) ** 2  # (F, 257)

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    delta = (high - low) / (num_mel_bins + 1)
    bins = mel(np.arange(padded // 2) * rate / padded)  # (256,) the Nyquist bin is never used
    banks = np.zeros((padded // 2, num_mel_bins))
    for m in range(num_mel_bins):
        left, centre, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        up, down = (bins - left) / (centre - left), (right - bins) / (right - centre)
        banks[:, m] = np.where((bins > left) & (bins < right), np.where(bins <= centre, up, down), 0.0)
    energies = power[:, : padded // 2] @ banks
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def preprocess(waves: np.ndarray, fbank_mean: float = 15.41663, fbank_std: float = 6.55582) -> torch.Tensor:
    """Upstream's `preprocess`: (B, samples) -> (B, frames, 128) normalised fbank, float32."""
    fbank = np.stack([kaldi_fbank(w) for w in waves])
    return torch.from_numpy((fbank - fbank_mean) / (2 * fbank_std)).float()
