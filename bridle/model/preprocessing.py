"""Preprocessing from a decoded signal to the encoder's input tensor, as torch modules that export to ONNX.

The exported graphs start from the decoded signal (see docs/contracts.md), so this preprocessing runs
inside them and the service only decodes. Training uses the same modules, so a model sees identical
numbers in training and in serving.

- audio (B, samples) float32 in [-1, 1] -> Kaldi log-mel fbank -> (x - mean) / (2 std) (AST's
  normalisation) -> cut or zero-padded (after normalisation, so padding is the mean) to `num_frames`
  -> (B, 1, num_frames, mel)
- image (B, 3, S, S) uint8 (or float in 0..255) -> x / 255 -> (x - mean) / std per channel
- video (B, T, 3, S, S) uint8 -> the same per frame -> (B, 3, T, S, S), the layout of a 3-D conv

`fbank_stats` measures a data set's fbank mean and std, which training stores in `AudioInput`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from bridle.model.config import AudioInput, ImageInput, ModelConfig, VideoInput
from bridle.model.fbank import KaldiFbank
from bridle.model.modalities import load_named, spec_for


class AudioPreprocessor(nn.Module):
    """(B, samples) float32 waveform -> (B, 1, num_frames, mel) normalised log-mel fbank."""

    def __init__(self, audio: AudioInput) -> None:
        super().__init__()
        self.audio = audio
        self.fbank = KaldiFbank(audio)
        self.num_frames = audio.num_frames
        self.mean = float(audio.mean)
        self.scale = 1.0 / (2.0 * float(audio.std))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        if signal.dim() != 2:
            raise ValueError(f"audio input must be (batch, samples), got shape {tuple(signal.shape)}")
        # Samples past the last frame we keep would only be cut off again: drop them before the fbank.
        needed = (self.num_frames - 1) * self.fbank.shift + self.fbank.length
        if signal.shape[1] > needed:
            signal = signal[:, :needed]
        frames = self.fbank.num_frames(signal.shape[1])
        if frames == 0:  # shorter than one frame: Kaldi gives no frames, so all padding
            return signal.new_zeros(signal.shape[0], 1, self.num_frames, self.audio.num_mel_bins)
        # with pad "fbank", NaN samples are padding: their frames are zero fbank frames
        nan_padded = self.audio.pad == "fbank"
        raw = self._fbank_nan_padded(signal) if nan_padded else self.fbank(signal)  # (B, F, mel)
        feats = (raw - self.mean) * self.scale  # (B, F, mel), F <= num_frames
        if frames < self.num_frames:
            feats = nn.functional.pad(feats, (0, 0, 0, self.num_frames - frames))  # zeros = the mean
        return feats.unsqueeze(1)  # (B, 1, num_frames, mel)

    def _fbank_nan_padded(self, signal: torch.Tensor) -> torch.Tensor:
        """The fbank with every frame that touches a NaN sample set to 0 before the normalisation: a
        clip padded with NaN (`AudioInput.pad` "fbank", bridle/model/windowing.py) gives Kaldi's frames
        of the clip followed by zero frames, as ASTFeatureExtractor pads its fbank."""
        padding = torch.isnan(self.fbank.frames(signal.float()).sum(dim=-1, keepdim=True))  # (B, F, 1)
        clean = torch.where(torch.isnan(signal), torch.zeros_like(signal), signal)
        return torch.where(padding, torch.zeros_like(padding, dtype=torch.float32), self.fbank(clean))


def _channel_affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) per channel with x * scale + bias == (x / 255 - mean) / std, shape (3,)."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    return (1.0 / (255.0 * s)).float(), (-m / s).float()


class ImagePreprocessor(nn.Module):
    """(B, 3, S, S) uint8 (or float in 0..255) -> (B, 3, S, S) float32, per-channel mean/std."""

    def __init__(self, image: ImageInput) -> None:
        super().__init__()
        self.image_size = image.image_size
        scale, bias = _channel_affine(image.mean, image.std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bias", bias.view(1, 3, 1, 1), persistent=False)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if signal.dim() != 4 or tuple(signal.shape[1:]) != (3, s, s):
            raise ValueError(f"image input must be (batch, 3, {s}, {s}), got shape {tuple(signal.shape)}")
        return signal.to(torch.float32) * self.scale + self.bias


class VideoPreprocessor(nn.Module):
    """(B, T, 3, S, S) uint8 -> (B, 3, T, S, S) float32, each frame normalised like an image."""

    def __init__(self, video: VideoInput) -> None:
        super().__init__()
        self.shape = (video.num_frames, 3, video.image_size, video.image_size)
        scale, bias = _channel_affine(video.mean, video.std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("bias", bias.view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        if signal.dim() != 5 or tuple(signal.shape[1:]) != self.shape:
            raise ValueError(f"video input must be (batch, {self.shape}), got shape {tuple(signal.shape)}")
        # permute the 1-byte input, so the float result comes out contiguous in (B, 3, T, S, S)
        x = signal.permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, S, S)
        return x.to(torch.float32) * self.scale + self.bias


def build_preprocessor(cfg: ModelConfig) -> nn.Module:
    """The module from a decoded signal to the encoder's input for `cfg`'s modality: the one its spec
    names, built on `cfg.input`."""
    return load_named(spec_for(cfg.modality).preprocessor)(cfg.input)


@torch.no_grad()
def fbank_stats(waves: Iterable[np.ndarray | torch.Tensor], audio: AudioInput) -> tuple[float, float]:
    """Mean and (population) std of all fbank values of `waves`, for `AudioInput.mean` / `.std`.

    Each wave is (samples,) or a batch (B, samples) of float waveforms in [-1, 1]; lengths may differ
    between items. Waves shorter than one frame have no fbank values and are skipped. The per-item
    mean and squared deviations are merged in float64 (Chan et al.), so long data sets lose nothing.
    """
    fbank = KaldiFbank(audio)
    count, mean, m2 = 0, 0.0, 0.0
    for wave in waves:
        x = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
        x = x.to(torch.float32)
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2:
            raise ValueError(f"a wave must be (samples,) or (batch, samples), got shape {tuple(x.shape)}")
        if fbank.num_frames(x.shape[1]) == 0:
            continue
        feats = fbank(x).double()  # (B, F, mel)
        n = feats.numel()
        item_mean = feats.mean().item()
        item_m2 = ((feats - item_mean) ** 2).sum().item()
        delta = item_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += item_m2 + delta * delta * count * n / total
        count = total
    if count == 0:
        raise ValueError("no wave is long enough for one fbank frame")
    return mean, float(np.sqrt(m2 / count))
