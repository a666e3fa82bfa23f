"""Windowing shared by training and the service: audio windows and video clips, on real decoded media."""

from __future__ import annotations

import numpy as np
import pytest

from bridle_data.media_files import make_video
from bridle_model.decoding import DecodedVideo, decode_video
from bridle_model.windowing import (
    audio_windows,
    centre_window,
    clip_spans,
    first_clip,
    fit_window,
    training_window,
    video_windows,
)


def frame_ids(frames: int, fps: float) -> DecodedVideo:
    """A video whose frame i holds the value i everywhere: (F, 3, 2, 2)."""
    pixels = np.broadcast_to(np.arange(frames, dtype=np.uint8)[:, None, None, None], (frames, 3, 2, 2))
    return DecodedVideo(np.ascontiguousarray(pixels), np.arange(frames) / fps, frames / fps)


def test_fit_window_cuts_or_pads_with_silence() -> None:
    wave = np.arange(10, dtype=np.float32)
    assert fit_window(wave, 4).tolist() == [0, 1, 2, 3]
    assert fit_window(wave, 4, start=8).tolist() == [8, 9, 0, 0]
    assert fit_window(wave, 12).tolist() == [*range(10), 0, 0]
    assert fit_window(wave.astype(np.float64), 4).dtype == np.float32


def test_audio_windows_are_consecutive_and_the_last_is_padded() -> None:
    wave = np.arange(1, 11, dtype=np.float32)  # 10 samples at 4 Hz: 2.5 s
    windows, spans = audio_windows(wave, window=4, sample_rate=4)
    assert windows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert spans == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    windows, spans = audio_windows(wave[:1], window=4, sample_rate=4)  # shorter than one window: centred
    assert windows.tolist() == [[0, 1, 0, 0]] and spans == [(0.0, 0.25)]
    windows, spans = audio_windows(wave[:8], window=4, sample_rate=4)  # a whole number: no empty window
    assert windows.shape == (2, 4) and spans[-1] == (1.0, 2.0)


def test_a_short_clip_is_centred_in_training_and_serving_alike() -> None:
    # issue 13: a 0.4 s clip sat at the start of a 1.295 s window, after it 0.9 s of padding; served and
    # trained windows now both centre it, whatever silence its recording kept at the start
    clip = np.arange(1, 5, dtype=np.float32)
    assert centre_window(clip, 10).tolist() == [0, 0, 0, 1, 2, 3, 4, 0, 0, 0]
    assert centre_window(clip, 9).tolist() == [0, 0, 1, 2, 3, 4, 0, 0, 0]  # the odd sample goes after
    served, _ = audio_windows(clip, window=10, sample_rate=10)
    np.testing.assert_array_equal(served[0], training_window(clip, 10))
    long = np.arange(20, dtype=np.float32)
    assert training_window(long, 4, start=3).tolist() == [3, 4, 5, 6]  # longer: cut where asked
    with pytest.raises(ValueError, match="does not fit"):
        centre_window(long, 4)


def test_clip_spans_cover_the_duration() -> None:
    assert clip_spans(5.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert clip_spans(4.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]
    assert clip_spans(0.5, 2.0) == [(0.0, 0.5)]
    assert clip_spans(0.0, 2.0) == [(0.0, 0.0)]  # one clip even of nothing (a single still frame)
    with pytest.raises(ValueError, match="clip_seconds must be positive"):
        clip_spans(1.0, 0.0)


def test_video_windows_sample_each_clip_and_training_takes_the_first() -> None:
    video = frame_ids(25, fps=10)  # 2.5 s
    clips, spans = video_windows(video, num_frames=4, clip_seconds=1.0)
    assert clips.shape == (3, 4, 3, 2, 2) and spans == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    ids = clips[:, :, 0, 0, 0].tolist()  # (W, T) frame ids
    assert ids[:2] == [[0, 2, 5, 7], [10, 12, 15, 17]]  # nearest to 0, .25, .5, .75 s (ties: earlier)
    assert ids[2] == [20, 21, 22, 24]  # the last clip samples its 0.5 s
    np.testing.assert_array_equal(first_clip(video, 4, 1.0), clips[0])
    # a clip no longer than clip_seconds is sampled whole, as training sampled it before windowing
    whole, _ = video_windows(video, num_frames=5, clip_seconds=2.5)
    assert whole[0, :, 0, 0, 0].tolist() == [0, 5, 10, 15, 20]


def test_video_windows_of_a_real_mp4() -> None:
    video = decode_video(make_video("mp4", seconds=2.0, fps=10), 16)
    clips, spans = video_windows(video, num_frames=4, clip_seconds=1.0)
    assert clips.shape == (2, 4, 3, 16, 16) and spans == [(0.0, 1.0), (1.0, 2.0)]
