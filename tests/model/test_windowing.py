"""Windowing shared by training, the service and the batch job: audio windows and video clips (on real
decoded media), the one-window tolerance, the hop, and the clip results pooled from the windows'."""

from __future__ import annotations

import numpy as np
import pytest

from bridle.data.media_files import make_video
from bridle.model.beats import beats_audio_input
from bridle.model.decoding import DecodedVideo, decode_video
from bridle.model.windowing import (
    WindowPolicy,
    aggregate_for,
    audio_windows,
    centre_window,
    clip_mean,
    clip_scores,
    clip_spans,
    first_clip,
    fit_window,
    training_window,
    video_windows,
    window_weights,
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


def test_audio_windows_are_full_and_the_last_ends_at_the_end() -> None:
    wave = np.arange(1, 11, dtype=np.float32)  # 10 samples at 4 Hz: 2.5 s
    windows, spans = audio_windows(wave, window=4, sample_rate=4)
    assert windows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [7, 8, 9, 10]]  # no padding
    assert spans == [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)]
    windows, spans = audio_windows(wave[:1], window=4, sample_rate=4)  # shorter than one window: centred
    assert windows.tolist() == [[0, 1, 0, 0]] and spans == [(0.0, 0.25)]
    windows, spans = audio_windows(wave[:8], window=4, sample_rate=4)  # a whole number: no extra window
    assert windows.shape == (2, 4) and spans[-1] == (1.0, 2.0)
    windows, spans = audio_windows(wave, window=4, sample_rate=4, policy=WindowPolicy(hop=0.5))  # hop 2
    assert windows[:, 0].tolist() == [1, 3, 5, 7] and spans[-1] == (1.5, 2.5)


# BEATs' window: 992 fbank frames = 158,960 samples = 9.935 s at 16 kHz
BEATS_WINDOW = beats_audio_input(992).window_samples


@pytest.mark.parametrize(
    ("seconds", "spans"),
    [
        (9.9, [(0.0, 9.9)]),  # shorter: one window, centred
        (10.0, [(0.0, 9.935)]),  # 0.65 % longer: one window, the last 65 ms dropped (issue 29)
        (10.5, [(0.0, 9.935), (0.565, 10.5)]),  # the second window ends at the end, overlapping
        (25.0, [(0.0, 9.935), (9.935, 19.87), (15.065, 25.0)]),
    ],
)
def test_beats_windows_of_real_clip_lengths(seconds: float, spans: list[tuple[float, float]]) -> None:
    assert BEATS_WINDOW == 158_960
    samples = round(seconds * 16_000)
    wave = np.arange(samples, dtype=np.float32)  # each sample holds its index (exact in float32)
    windows, got = audio_windows(wave, BEATS_WINDOW, 16_000)
    assert windows.shape == (len(spans), BEATS_WINDOW)
    np.testing.assert_allclose(got, spans, rtol=0, atol=1e-9)
    if samples <= BEATS_WINDOW:
        np.testing.assert_array_equal(windows[0], centre_window(wave, BEATS_WINDOW))
    else:  # every window is real signal: sample i of a window starting at s holds s + i
        starts = [round(s * 16_000) for s, _ in got]
        np.testing.assert_array_equal(windows, np.array(starts)[:, None] + np.arange(BEATS_WINDOW))
    # video clips of the same length follow the same rules in seconds
    np.testing.assert_allclose(clip_spans(seconds, BEATS_WINDOW / 16_000), spans, rtol=0, atol=1e-9)


def test_the_tolerance_and_hop_are_settings() -> None:
    wave = np.arange(103, dtype=np.float32)  # 3 % longer than a window of 100
    assert len(audio_windows(wave, 100, 100)[1]) == 2  # over the default 1 %: two windows
    windows, spans = audio_windows(wave, 100, 100, WindowPolicy(tolerance=0.05))
    assert spans == [(0.0, 1.0)] and windows[0, -1] == 99  # within 5 %: one, the tail dropped
    assert clip_spans(25.0, 10.0, WindowPolicy(hop=0.5)) == [(0, 10), (5, 15), (10, 20), (15, 25)]
    assert clip_spans(26.0, 10.0, WindowPolicy(hop=0.5))[-2:] == [(15, 25), (16, 26)]
    for bad in ({"hop": 0.0}, {"hop": 1.5}, {"tolerance": -0.1}, {"tolerance": 1.0}):
        with pytest.raises(ValueError, match="window"):
            WindowPolicy(**bad)


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
    assert clip_spans(5.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (3.0, 5.0)]
    assert clip_spans(4.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]
    assert clip_spans(0.5, 2.0) == [(0.0, 0.5)]
    assert clip_spans(0.0, 2.0) == [(0.0, 0.0)]  # one clip even of nothing (a single still frame)
    with pytest.raises(ValueError, match="clip_seconds must be positive"):
        clip_spans(1.0, 0.0)


def test_video_windows_sample_each_clip_and_training_takes_the_first() -> None:
    video = frame_ids(25, fps=10)  # 2.5 s
    clips, spans = video_windows(video, num_frames=4, clip_seconds=1.0)
    assert clips.shape == (3, 4, 3, 2, 2) and spans == [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)]
    ids = clips[:, :, 0, 0, 0].tolist()  # (W, T) frame ids
    assert ids[:2] == [[0, 2, 5, 7], [10, 12, 15, 17]]  # nearest to 0, .25, .5, .75 s (ties: earlier)
    assert ids[2] == [15, 17, 20, 22]  # the last clip is a whole second, ending at the end
    np.testing.assert_array_equal(first_clip(video, 4, 1.0), clips[0])
    # a clip no longer than clip_seconds is sampled whole, as training sampled it before windowing
    whole, _ = video_windows(video, num_frames=5, clip_seconds=2.5)
    assert whole[0, :, 0, 0, 0].tolist() == [0, 5, 10, 15, 20]


def test_video_windows_of_a_real_mp4() -> None:
    video = decode_video(make_video("mp4", seconds=2.0, fps=10), 16)
    clips, spans = video_windows(video, num_frames=4, clip_seconds=1.0)
    assert clips.shape == (2, 4, 3, 16, 16) and spans == [(0.0, 1.0), (1.0, 2.0)]


def test_clip_results_weigh_windows_by_their_seconds_of_signal() -> None:
    spans = [(0.0, 9.935), (9.935, 10.0)]  # the old windows of a 10 s clip: a 65 ms sliver
    assert window_weights(spans).tolist() == pytest.approx([9.935, 0.065])
    values = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # (W, D)
    clip = clip_mean(values, spans)
    assert clip.dtype == np.float32 and clip.tolist() == pytest.approx([0.9935, 0.0065], abs=1e-6)
    assert clip_mean(values, [(None, None), (None, None)]).tolist() == [0.5, 0.5]  # no spans: alike
    assert clip_mean(values, [(0.0, 0.0), (0.0, 0.0)]).tolist() == [0.5, 0.5]  # still frames: alike
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])  # (W, C) sigmoid scores
    assert clip_scores(scores, spans, "max").tolist() == [0.9, 0.8]
    assert clip_scores(scores, spans, "mean").tolist() == pytest.approx([0.89545, 0.10455])
    with pytest.raises(ValueError, match="2 windows but 1 spans"):
        clip_mean(values, spans[:1])
    with pytest.raises(ValueError, match="one of"):
        clip_scores(scores, spans, "median")


def test_max_is_the_multi_label_default_and_refused_for_a_softmax_head() -> None:
    assert aggregate_for("sigmoid", None) == "max" and aggregate_for("softmax", None) == "mean"
    assert aggregate_for("sigmoid", "mean") == "mean" and aggregate_for("softmax", "mean") == "mean"
    with pytest.raises(ValueError, match="aggregate=max is for multi-label"):
        aggregate_for("softmax", "max")
    with pytest.raises(ValueError, match="one of"):
        aggregate_for("sigmoid", "median")
