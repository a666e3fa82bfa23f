"""Decoded media -> the fixed-size windows a model takes, for training and for the service alike.

- audio: a waveform is cut into consecutive windows of the model's `window_samples`, the last padded
  with silence (the service); a waveform shorter than one window is centred in it (`centre_window`),
  with silence on both sides, so where a short clip sits does not depend on how much silence its
  recording kept at the start. Training takes one window with `training_window`: a short clip centred
  the same way, a longer one start-aligned or from a random start (drawn by the data set).
- video: a clip is cut into consecutive clips of the model's `VideoInput.clip_seconds`, each sampled to
  its T frames (the last clip samples its shorter span); training takes the first.
- images are one window and need nothing here.

The lengths come from the model's input config, which the checkpoint and the manifest carry, so training
and serving cut the same windows. numpy only (no torch): the service imports this module.
"""

from __future__ import annotations

import math

import numpy as np

from bridle_model.decoding import DecodedVideo, sample_frames

Span = tuple[float, float]  # (start, end) in seconds


def fit_window(wave: np.ndarray, window: int, start: int = 0) -> np.ndarray:
    """`window` samples of `wave` (samples,) from `start`, zero-padded at the end when short."""
    out = np.zeros(window, np.float32)  # (window,)
    piece = wave[start : start + window]
    out[: len(piece)] = piece
    return out


def centre_window(wave: np.ndarray, window: int) -> np.ndarray:
    """`wave` (samples,) no longer than `window`, centred in `window` samples of silence (the extra
    sample of an odd remainder goes after it)."""
    if len(wave) > window:
        raise ValueError(f"a wave of {len(wave)} samples does not fit a window of {window}")
    return fit_window(np.pad(np.asarray(wave, np.float32), ((window - len(wave)) // 2, 0)), window)


def training_window(wave: np.ndarray, window: int, start: int = 0) -> np.ndarray:
    """The window training takes from `wave` (samples,): a short wave centred (as `audio_windows`
    serves it), a longer one cut from `start`."""
    return centre_window(wave, window) if len(wave) <= window else fit_window(wave, window, start)


def audio_windows(wave: np.ndarray, window: int, sample_rate: int) -> tuple[np.ndarray, list[Span]]:
    """Consecutive windows of `wave` (samples,), at least one -> (W, window) float32 and their spans.
    A wave shorter than one window is centred in it; the last of several is padded at its end."""
    count = max(1, math.ceil(len(wave) / window))
    if count == 1:
        return centre_window(wave, window)[None], [(0.0, len(wave) / sample_rate)]  # (1, window)
    windows = fit_window(wave, count * window).reshape(count, window)  # (W, window)
    duration = len(wave) / sample_rate
    spans = [(i * window / sample_rate, min((i + 1) * window / sample_rate, duration)) for i in range(count)]
    return windows, spans


def clip_spans(duration: float, clip_seconds: float) -> list[Span]:
    """Consecutive spans of `clip_seconds` covering `duration` seconds, at least one."""
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    count = max(1, math.ceil(duration / clip_seconds - 1e-9))  # a whole number of clips is not one more
    return [(i * clip_seconds, min((i + 1) * clip_seconds, duration)) for i in range(count)]


def first_clip(video: DecodedVideo, num_frames: int, clip_seconds: float) -> np.ndarray:
    """The first of `video_windows`' clips -> (T, 3, S, S) uint8."""
    start, end = clip_spans(video.duration, clip_seconds)[0]
    return sample_frames(video, num_frames, start=start, end=end)


def video_windows(video: DecodedVideo, num_frames: int, clip_seconds: float) -> tuple[np.ndarray, list[Span]]:
    """Consecutive clips of `video` -> (W, T, 3, S, S) uint8 and their spans."""
    spans = clip_spans(video.duration, clip_seconds)
    clips = [sample_frames(video, num_frames, start=s, end=e) for s, e in spans]  # each (T, 3, S, S)
    return np.stack(clips), spans
