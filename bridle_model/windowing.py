"""Decoded media -> the fixed-size windows a model takes, for training and for the service alike.

- audio: a waveform is cut into consecutive windows of the model's `window_samples`, the last padded
  with silence (the service); training takes one window with `fit_window`, start-aligned or from a
  random start (drawn by the data set with torch's generator, which DataLoader seeds per worker).
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


def audio_windows(wave: np.ndarray, window: int, sample_rate: int) -> tuple[np.ndarray, list[Span]]:
    """Consecutive windows of `wave` (samples,), at least one -> (W, window) float32 and their spans."""
    count = max(1, math.ceil(len(wave) / window))
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
