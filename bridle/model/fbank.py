"""Kaldi-compatible log-mel filterbank features as a plain torch module that exports to ONNX.

The audio models (like AST and BEATs) are fed `torchaudio.compliance.kaldi.fbank` of the waveform scaled
to 16-bit range. The service runs ONNX only, so the fbank has to live inside the exported graph: this
module computes the same numbers with ops every exporter and runtime has (slices, reshapes, matmuls,
log) and no STFT op.

Per frame, Kaldi does: remove the DC offset, pre-emphasis (x[i] -= 0.97 x[i-1], x[0] -= 0.97 x[0]),
Hann window (Kaldi's "hanning": 0.5 - 0.5 cos(2 pi n / (N - 1))), zero-pad to a power of two, power
spectrum, triangular mel bins (mel = 1127 ln(1 + f / 700)), log with a floor at float32 eps (Kaldi's;
`AudioInput.energy_floor` sets another: digital silence then sits near a real recording's noise floor).
Everything after the DC removal up to the power spectrum is linear, so the 2**15 scale, pre-emphasis,
window, zero padding and the real DFT fold into one (frame_length, 2 * K) float64-built matrix: the
cosine half gives the real parts, the sine half the imaginary parts. K = padded / 2 bins (0 .. 255 for a
512-point FFT): Kaldi's mel banks never use the Nyquist bin, so it is not computed. The DC offset is
subtracted explicitly rather than folded in too: folded, a frame's offset meets a matrix whose columns
sum to ~0 and float32 cancellation shows (80 bins, a 0.5 offset under speech: errors up to 0.7 in the log
against a float64 reference, against 0.05 this way and 0.26 for kaldi-native-fbank's own float32).

Framing (snip_edges=True: only whole frames, F = 1 + (samples - length) // shift) is done by reshaping
shifted slices of the waveform into (F, shift) rows and concatenating them to (F, length): plain slices
and reshapes, which export with both the dynamo and the legacy exporter (`unfold` does not with the
legacy one) and cost one copy, like `unfold` followed by the DC subtraction would.

With many mel bins and a 512-point FFT (128 bins at 16 kHz), the lowest triangles are narrower than
one FFT bin and contain none: Kaldi (and kaldi-native-fbank) refuse such a configuration, torchaudio
gives those bins zero energy, hence log(eps). This module does as torchaudio does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bridle.model.config import AudioInput

LOW_FREQ = 20.0  # Hz, lower edge of the first mel triangle (Kaldi's default)
LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi's energy floor before the log (the default)


def kaldi_mel(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def frame_geometry(audio: AudioInput) -> tuple[int, int, int]:
    """(frame length, frame shift, padded FFT length) in samples, as Kaldi rounds them."""
    length = int(audio.sample_rate * audio.frame_length_ms / 1000 + 0.5)
    shift = int(audio.sample_rate * audio.frame_shift_ms / 1000 + 0.5)
    padded = 1 << (length - 1).bit_length()  # round_to_power_of_two
    return length, shift, padded


def num_frames(samples: int, audio: AudioInput) -> int:
    """Frames Kaldi makes from `samples` samples with snip_edges=True (0 if shorter than one frame)."""
    length, shift, _ = frame_geometry(audio)
    return 0 if samples < length else 1 + (samples - length) // shift


def mel_matrix(audio: AudioInput, num_fft_bins: int, padded: int) -> np.ndarray:
    """Kaldi's triangular mel weights over FFT bins 0 .. num_fft_bins - 1 -> (num_fft_bins, mel) float64.

    A bin's weight is taken at its centre frequency, on the mel scale, strictly inside the triangle.
    """
    nyquist = audio.sample_rate / 2
    mel_low, mel_high = kaldi_mel(LOW_FREQ), kaldi_mel(nyquist)
    delta = (mel_high - mel_low) / (audio.num_mel_bins + 1)
    left = mel_low + delta * np.arange(audio.num_mel_bins)  # (mel,)
    center, right = left + delta, left + 2 * delta
    mel = kaldi_mel(np.arange(num_fft_bins) * (audio.sample_rate / padded))[:, None]  # (K, 1)
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = np.where(mel <= center, rising, falling)
    return np.where((mel > left) & (mel < right), weights, 0.0)  # (K, mel)


def window(audio: AudioInput, length: int) -> np.ndarray:
    """Kaldi's analysis windows (float64, (length,))."""
    n = np.arange(length)
    a = 2 * math.pi / (length - 1)
    if audio.window == "hanning":
        return 0.5 - 0.5 * np.cos(a * n)
    if audio.window == "hamming":
        return 0.54 - 0.46 * np.cos(a * n)
    if audio.window == "povey":
        return (0.5 - 0.5 * np.cos(a * n)) ** 0.85
    if audio.window == "rectangular":
        return np.ones(length)
    raise ValueError(f"unsupported window {audio.window!r}")


def dft_matrix(audio: AudioInput, length: int, padded: int, num_fft_bins: int) -> np.ndarray:
    """Scale, pre-emphasis, window and real DFT of a DC-free frame as one (length, 2 K) float64 matrix.

    frame (length,) @ matrix = [Re X_0 .. Re X_{K-1}, Im X_0 .. Im X_{K-1}] of the padded FFT.
    """
    coeff = audio.preemphasis
    preemph = np.eye(length)  # row i of the emphasised frame = preemph[i] @ frame
    preemph[np.arange(1, length), np.arange(length - 1)] = -coeff
    preemph[0, 0] = 1.0 - coeff
    scale = audio.waveform_scale
    shaped = window(audio, length)[:, None] * preemph * scale  # (length, length): frame -> windowed
    angles = 2 * math.pi * np.outer(np.arange(length), np.arange(num_fft_bins)) / padded  # (length, K)
    # the zero padding adds nothing to the DFT, so only the first `length` samples have rows
    return shaped.T @ np.concatenate([np.cos(angles), -np.sin(angles)], axis=1)  # (length, 2K)


class KaldiFbank(nn.Module):
    """(B, samples) float waveform in [-1, 1] -> (B, frames, num_mel_bins) Kaldi log-mel fbank.

    Equal (to float32 rounding) to kaldi-native-fbank / torchaudio.compliance.kaldi.fbank of
    `waveform * audio.waveform_scale` (2**15 unless set) with dither 0, snip_edges, remove_dc_offset,
    the config's pre-emphasis and window, a power-of-two FFT, power spectrum, no energy, low_freq 20 Hz,
    high_freq Nyquist; mel energies below the config's `energy_floor` (Kaldi: float32 eps) are raised
    to it before the log.
    """

    def __init__(self, audio: AudioInput) -> None:
        super().__init__()
        self.audio = audio
        self.length, self.shift, self.padded = frame_geometry(audio)
        bins = self.padded // 2  # Kaldi's mel banks see bins 0 .. padded/2 - 1 (no Nyquist)
        self.num_fft_bins = bins
        self.floor = float(audio.energy_floor)
        dft = dft_matrix(audio, self.length, self.padded, bins)
        self.register_buffer("dft", torch.from_numpy(dft).float(), persistent=False)  # (length, 2K)
        mel = torch.from_numpy(mel_matrix(audio, bins, self.padded)).float()  # (K, mel)
        # stacked twice: [Re^2, Im^2] (2K) @ [mel; mel] = power (K) @ mel, with no slicing or add
        self.register_buffer("mel", torch.cat([mel, mel]), persistent=False)  # (2K, mel)

    def num_frames(self, samples: int) -> int:
        return num_frames(samples, self.audio)

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, F, length) overlapping frames, snip_edges style."""
        batch, samples = waveform.shape[0], waveform.shape[-1]
        n = self.num_frames(samples)
        if n == 0:
            raise ValueError(f"need at least {self.length} samples for one frame, got {samples}")
        pieces = []
        # piece k holds samples [k * shift, k * shift + width) of every frame: a slice of n * shift
        # consecutive samples starting at k * shift, viewed as (n, shift) rows
        for start in range(0, self.length, self.shift):
            width = min(self.shift, self.length - start)
            end = start + n * self.shift
            piece = waveform[:, start:end]
            if end > samples:  # the last piece's rows run past the end only in their unused tail
                piece = nn.functional.pad(piece, (0, end - samples))
            pieces.append(piece.reshape(batch, n, self.shift)[:, :, :width])
        return torch.cat(pieces, dim=-1)  # (B, F, length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
        frames = self.frames(waveform.float())  # (B, F, length)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
        spectrum = frames @ self.dft  # (B, F, 2K): real parts, then imaginary parts
        energies = (spectrum * spectrum) @ self.mel  # (B, F, mel): power spectrum through the mel bins
        return torch.log(torch.clamp(energies, min=self.floor))
