"""The demo data builder: layout, decodability, the voice-disjoint split, determinism, idempotency."""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import numpy as np
import pytest

from bridle.model.decoding import decode_audio, decode_image, decode_video
from bridle.data import DIGIT_WORDS
from bridle.data.demo_data import (
    DIRECTIONS,
    MARKER,
    QUICK_AUDIO,
    VIDEO_FRAMES,
    AudioPlan,
    build_all,
    moving_digit,
    plan_spoken_digits,
)


def rows(root: Path, name: str) -> list[dict[str, str]]:
    with open(root / name / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["audio-digits", "image-digits", "video-motion"])
def test_layout_is_split_class_file_and_metadata_lists_every_file(demo_root: Path, name: str) -> None:
    table = rows(demo_root, name)
    assert table and (demo_root / name / MARKER).exists()
    on_disk = {p.relative_to(demo_root / name).as_posix() for p in (demo_root / name).glob("*/*/*")}
    assert on_disk == {r["path"] for r in table}
    for r in table:
        split, label, _ = r["path"].split("/")
        assert (split, label) == (r["split"], r["label"])
    printed = {"val", "printed-train", "printed-test"} if name == "image-digits" else set()
    assert {r["split"] for r in table} == {"train", "test"} | printed


def test_spoken_digits_are_16k_mono_wav_and_decode(demo_root: Path) -> None:
    table = rows(demo_root, "audio-digits")
    assert len(table) == QUICK_AUDIO.voices * len(DIGIT_WORDS) * QUICK_AUDIO.clips_per_digit
    assert {r["digit"] for r in table} == set(DIGIT_WORDS)
    for r in table[:5]:
        with wave.open(str(demo_root / "audio-digits" / r["path"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        samples = decode_audio(demo_root / "audio-digits" / r["path"], 16_000)
        assert 0.2 < len(samples) / 16_000 < 3.0  # one spoken word
        assert np.abs(samples).max() > 0.05  # not silence


def test_audio_split_is_voice_disjoint(demo_root: Path) -> None:
    table = rows(demo_root, "audio-digits")
    train = {r["voice"] for r in table if r["split"] == "train"}
    test = {r["voice"] for r in table if r["split"] == "test"}
    assert len(test) == QUICK_AUDIO.test_voices and not train & test


def test_plan_is_deterministic_given_the_seed() -> None:
    plan = AudioPlan(voices=10, clips_per_digit=2, test_voices=3)
    assert plan_spoken_digits(plan, 1) == plan_spoken_digits(plan, 1)
    assert plan_spoken_digits(plan, 1) != plan_spoken_digits(plan, 2)
    with pytest.raises(ValueError, match="test_voices"):
        plan_spoken_digits(AudioPlan(voices=3, clips_per_digit=1, test_voices=3), 0)


def test_images_are_rgb_pngs_that_decode(demo_root: Path) -> None:
    table = rows(demo_root, "image-digits")
    assert {r["digit"] for r in table} == set(DIGIT_WORDS)
    image = decode_image(demo_root / "image-digits" / table[0]["path"], 32)
    assert image.shape == (3, 32, 32) and image.dtype == np.uint8 and image.max() > 100


def test_videos_are_mp4_clips_that_decode(demo_root: Path) -> None:
    table = rows(demo_root, "video-motion")
    assert {r["direction"] for r in table} == set(DIRECTIONS)
    video = decode_video(demo_root / "video-motion" / table[0]["path"], 32)
    assert video.frames.shape == (VIDEO_FRAMES, 3, 32, 32)
    assert video.duration == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_the_digit_moves_in_its_direction(direction: str) -> None:
    frames = moving_digit(np.full((6, 6), 255, np.uint8), direction, start=(5, 5))
    ys, xs = np.indices(frames.shape[1:3])

    def centre(t: int) -> np.ndarray:
        weight = frames[t, ..., 0].astype(float)
        return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()

    moved = np.sign(np.round(centre(-1) - centre(0)))
    assert tuple(moved) == DIRECTIONS[direction]


def test_complete_sets_are_skipped_and_incomplete_ones_rebuilt(tmp_path: Path) -> None:
    assert build_all(tmp_path, quick=True, only=["image-digits"]) == ["image-digits"]
    marker = tmp_path / "image-digits" / MARKER
    stamp = marker.stat().st_mtime_ns
    assert build_all(tmp_path, quick=True, only=["image-digits"]) == []
    assert marker.stat().st_mtime_ns == stamp
    marker.unlink()  # as if a build had been interrupted
    (tmp_path / "image-digits" / "stray.png").write_bytes(b"partial")
    assert build_all(tmp_path, quick=True, only=["image-digits"]) == ["image-digits"]
    assert not (tmp_path / "image-digits" / "stray.png").exists()
    assert build_all(tmp_path, quick=True, seed=1, only=["image-digits"]) == ["image-digits"]  # new params
    with pytest.raises(ValueError, match="unknown demo sets"):
        build_all(tmp_path, only=["mnist"])
