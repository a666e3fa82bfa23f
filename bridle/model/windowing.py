"""Decoded media -> the fixed-size windows a model takes, and windows' results -> clip results, for
training, the service and the batch job alike.

- audio: a waveform no longer than the model's `window_samples` is one window, centred in it
  (`centre_window`, silence on both sides, so where a short clip sits does not depend on how much
  silence its recording kept at the start). A waveform at most `WindowPolicy.tolerance` longer than the
  window is one window too, its trailing samples dropped, as upstream BEATs drops the fbank frames of a
  10 s clip that do not fill a patch. A longer one is cut into windows `WindowPolicy.hop` apart whose
  last ends at the clip's end (overlapping the one before): every window is real signal, none padded.
  Training takes one window with `training_window` (unchanged by the policy): a short clip centred the
  same way, a longer one start-aligned or from a random start (drawn by the data set).
- video: the same rules in seconds over the model's `VideoInput.clip_seconds`, each clip sampled to its
  T frames; a video shorter than one clip is sampled whole. Training takes the first clip.
- images are one window and need nothing here.
- clip results (`clip_mean`, `clip_scores`): the windows' embeddings and scores pooled into the clip's,
  each window weighted by the seconds of real signal it covers (`window_weights`). With the windows
  above, every window of a clip longer than one window covers a full window of signal, so their weights
  are equal; the weights keep the pooling right for any spans it is given. Scores of a multi-label
  (sigmoid) head may instead take the maximum over the windows (`aggregate="max"`, the usual choice for
  tagging a clip, and its default); a softmax head's clip scores are a distribution over the labels,
  which the maximum over windows is not, so "max" is refused for it (`aggregate_for`).

The lengths come from the model's input config, which the checkpoint and the manifest carry, so training
and serving cut the same windows. numpy only (no torch): the service imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bridle.model.decoding import DecodedVideo, FrameSampling, sample_frames

Span = tuple[float, float]  # (start, end) in seconds
Aggregate = Literal["mean", "max"]
AGGREGATES: tuple[str, ...] = ("mean", "max")

# a clip at most this fraction longer than the window is one window, its trailing part dropped. BEATs'
# 992-frame window is 9.935 s: a 10.0 s AudioSet clip (998 frames, 6 that do not fill a patch) is 0.65 %
# longer, and upstream drops those frames rather than make a second, mostly padded window
ONE_WINDOW_TOLERANCE = 0.01


@dataclass(frozen=True)
class WindowPolicy:
    """How media longer than one window is cut, for the service and the batch job alike.

    tolerance: a clip at most this fraction of a window longer than the window is one window, its
        trailing part dropped (`ONE_WINDOW_TOLERANCE`, 1 %).
    hop: the step between window starts, as a fraction of the window: 1.0 consecutive windows, 0.5
        half-overlapping ones. Whatever the hop, the last window ends at the clip's end.
    """

    tolerance: float = ONE_WINDOW_TOLERANCE
    hop: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"window tolerance must be in [0, 1), got {self.tolerance}")
        if not 0.0 < self.hop <= 1.0:
            raise ValueError(f"window hop must be in (0, 1] (a fraction of the window), got {self.hop}")


DEFAULT_POLICY = WindowPolicy()


def window_starts(length: float, window: float, hop: float, tolerance: float) -> list[float]:
    """Where the windows over `length` start (samples or seconds; `hop` in the same unit): one window
    when `length` is at most `tolerance` (a fraction) longer than `window`, else starts `hop` apart and
    a last one that ends at `length`."""
    if length <= window * (1.0 + tolerance):
        return [0]
    steps = math.ceil((length - window) / hop - 1e-9)  # hops until a window reaches the end
    return [i * hop for i in range(steps)] + [length - window]


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


def audio_windows(
    wave: np.ndarray,
    window: int,
    sample_rate: int,
    policy: WindowPolicy = DEFAULT_POLICY,
    pad: Literal["waveform", "fbank"] = "waveform",
) -> tuple[np.ndarray, list[Span]]:
    """The windows of `wave` (samples,) under `policy` -> (W, window) float32 and their spans in
    seconds: a wave shorter than one window centred in it, a longer one cut into full windows.

    With `pad` "fbank" (`AudioInput.pad`: Hugging Face's AST) a short wave starts the window and the
    rest is NaN, which the graph's fbank turns into zero frames, as ASTFeatureExtractor pads its fbank."""
    if len(wave) <= window:
        if pad == "fbank":
            out = np.full(window, np.nan, np.float32)  # (window,)
            out[: len(wave)] = wave
            return out[None], [(0.0, len(wave) / sample_rate)]
        return centre_window(wave, window)[None], [(0.0, len(wave) / sample_rate)]  # (1, window)
    hop = max(1, round(policy.hop * window))  # samples
    starts = [int(s) for s in window_starts(len(wave), window, hop, policy.tolerance)]
    windows = np.stack([fit_window(wave, window, s) for s in starts])  # (W, window), each full
    return windows, [(s / sample_rate, (s + window) / sample_rate) for s in starts]


def clip_spans(duration: float, clip_seconds: float, policy: WindowPolicy = DEFAULT_POLICY) -> list[Span]:
    """The spans of the clips over `duration` seconds under `policy`, at least one: the whole video
    when it is shorter than one clip (a single still frame: (0, 0))."""
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    if duration <= clip_seconds:
        return [(0.0, duration)]
    starts = window_starts(duration, clip_seconds, policy.hop * clip_seconds, policy.tolerance)
    spans = [(float(s), float(s) + clip_seconds) for s in starts]
    if len(spans) > 1:
        spans[-1] = (duration - clip_seconds, duration)  # exactly at the end, whatever the rounding
    return spans


def first_clip(video: DecodedVideo, num_frames: int, clip_seconds: float) -> np.ndarray:
    """The first of `video_windows`' clips (training's) -> (T, 3, S, S) uint8: the video's first
    `clip_seconds`, or the whole of a shorter one."""
    return sample_frames(video, num_frames, start=0.0, end=min(video.duration, clip_seconds))


def video_windows(
    video: DecodedVideo,
    num_frames: int,
    clip_seconds: float,
    policy: WindowPolicy = DEFAULT_POLICY,
    rule: FrameSampling = "nearest",
) -> tuple[np.ndarray, list[Span]]:
    """The clips of `video` under `policy` -> (W, T, 3, S, S) uint8 and their spans; `rule` picks each
    clip's frames (`sample_frames`)."""
    spans = clip_spans(video.duration, clip_seconds, policy)
    clips = [sample_frames(video, num_frames, start=s, end=e, rule=rule) for s, e in spans]  # (T, 3, S, S)
    return np.stack(clips), spans


# ---- windows' results -> the clip's ----------------------------------------------------------------


def window_weights(spans: list[tuple[float | None, float | None]]) -> np.ndarray:
    """(W,) the seconds of real signal each window covers (its span's length); an image's one window
    (no span) weighs 1. Windows that cover nothing (a still frame) all weigh alike."""
    weights = np.array([1.0 if s is None or e is None else e - s for s, e in spans], np.float64)
    return weights if weights.sum() > 0 else np.ones(len(spans))


def clip_mean(values: np.ndarray, spans: list[tuple[float | None, float | None]]) -> np.ndarray:
    """(W, ...) per-window values -> (...) their mean, each window weighted by `window_weights`."""
    weights = window_weights(spans)
    if len(weights) != len(values):
        raise ValueError(f"{len(values)} windows but {len(spans)} spans")
    return np.tensordot(weights / weights.sum(), values, axes=1).astype(values.dtype)


def aggregate_for(activation: str, asked: str | None) -> str:
    """How a head's window scores become the clip's: `asked`, else "max" for a sigmoid (multi-label)
    head and "mean" for a softmax one. ValueError for an unknown way, and for "max" of a softmax head
    (the maximum over windows of distributions is not one)."""
    if asked is None:
        return "max" if activation == "sigmoid" else "mean"
    if asked not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {asked!r}")
    if asked == "max" and activation != "sigmoid":
        raise ValueError(
            "aggregate=max is for multi-label (sigmoid) heads; this model's softmax scores are a "
            "distribution over its labels, pooled over windows by their mean (aggregate=mean)"
        )
    return asked


def clip_scores(
    scores: np.ndarray, spans: list[tuple[float | None, float | None]], aggregate: str
) -> np.ndarray:
    """(W, C) window scores -> (C,) the clip's: their weighted mean (`clip_mean`) or, with "max", the
    maximum over windows."""
    if aggregate == "max":
        return scores.max(axis=0)
    if aggregate == "mean":
        return clip_mean(scores, spans)
    raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
