"""Audio augmentation: deterministic per seed and epoch, every step changes the wave, off in evaluation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bridle.model.config import preset
from bridle.training.audio_augment import (
    AudioAugment,
    AudioAugmentSettings,
    band_limit,
    band_stop,
    equalise,
    pitch_shift,
)
from bridle.training.augment import AugmentError, augment_settings, build_augment
from bridle.training.data import MediaDataset
from bridle.training.distributed import init_from_env
from bridle.training.recipe import RecipeError, recipe_from_dict
from bridle.training.stages import prepare_run
from tests.training.training_media import write_audio

CFG = preset("micro-audio")
STEPS = ("speed", "pitch", "silence", "reverb", "noise", "telephone", "gain", "eq", "band_mask", "time_mask")
ALL_ON = {f"{step}_p": 1.0 for step in STEPS}


def _speech(seconds: float = 0.5, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(t.size)).astype(np.float32)


def test_same_seed_same_wave_other_seed_other_wave() -> None:
    augment = build_augment("audio", ALL_ON, CFG)
    assert augment is not None
    wave = _speech()
    a = augment(wave, np.random.default_rng([0, 0, 5]))
    b = augment(wave, np.random.default_rng([0, 0, 5]))
    c = augment(wave, np.random.default_rng([0, 1, 5]))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() <= 1.0
    assert not (len(a) == len(c) and np.allclose(a, c))


@pytest.mark.parametrize("step", sorted(ALL_ON))
def test_each_step_changes_the_wave(step: str) -> None:
    augment = AudioAugment(AudioAugmentSettings.from_dict({step: 1.0}), CFG)
    wave = _speech() + 0.01 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)  # broadband
    out = augment(wave, np.random.default_rng(1))
    assert len(out) != len(wave) or not np.allclose(out, wave, atol=1e-4)


def test_empty_settings_are_off() -> None:
    assert build_augment("audio", {}, CFG) is None


def test_pitch_shift_keeps_the_length_and_moves_the_tone() -> None:
    rate = 16_000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    up = pitch_shift(tone, 12.0, int(0.04 * rate))  # one octave up
    assert len(up) == len(tone)
    peak = np.argmax(np.abs(np.fft.rfft(up[2000:-2000]))) * rate / (len(up) - 4000)
    assert abs(peak - 880) < 20


def test_telephone_band_removes_high_and_low_frequencies() -> None:
    rate = 16_000
    t = np.arange(rate) / rate
    tones = np.sin(2 * np.pi * 100 * t) + np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t)
    spectrum = np.abs(np.fft.rfft(band_limit(tones.astype(np.float32), 300, 3400, rate)))
    assert spectrum[1000] > 100 * max(spectrum[100], spectrum[6000])


def test_band_stop_removes_only_its_band() -> None:
    rate = 8_000
    t = np.arange(rate) / rate
    tones = np.sin(2 * np.pi * 500 * t) + np.sin(2 * np.pi * 1500 * t)
    spectrum = np.abs(np.fft.rfft(band_stop(tones.astype(np.float32), 1400, 1600, rate)))
    assert spectrum[500] > 1000 * spectrum[1500]


def test_equalise_applies_its_gain_curve() -> None:
    rate = 8_000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    flat = equalise(tone, np.zeros(6), rate)
    np.testing.assert_allclose(flat, tone, atol=1e-5)
    louder = equalise(tone, np.full(6, 6.0), rate)  # +6 dB everywhere: twice the amplitude
    np.testing.assert_allclose(louder, 10 ** (6 / 20) * tone, atol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [{"wobble_p": 0.5}, {"eq_db": -1.0}, {"noise_p": 1.5}, {"speed": [1.2, 0.8]}, {"reverb_wet": [0.5, 1.5]}],
)
def test_bad_settings_are_clear_errors(settings: dict) -> None:
    with pytest.raises(AugmentError):
        augment_settings("audio", settings)


def test_recipe_checks_augment_at_load() -> None:
    raw = {
        "name": "x",
        "model": {"preset": "micro-audio"},
        "data": {"train": "t", "modality": "audio", "augment": {"noise_p": 0.5, "loudness": 2}},
        "stages": [{"kind": "pretrain", "steps": 1}],
    }
    with pytest.raises(RecipeError, match="loudness"):
        recipe_from_dict(raw)
    raw["data"]["augment"] = {"noise_p": 0.5}
    assert recipe_from_dict(raw).data.augment == {"noise_p": 0.5}


def test_dataset_draws_per_seed_epoch_and_index(tmp_path: Path) -> None:
    root = write_audio(tmp_path / "a", per_class=2)
    augment = build_augment("audio", ALL_ON, CFG)
    data = MediaDataset(root, CFG, cache=True, augment=augment, augment_seed=3)
    again = MediaDataset(root, CFG, cache=True, augment=augment, augment_seed=3)
    plain = MediaDataset(root, CFG, cache=True)
    np.testing.assert_array_equal(data[1, 2][0].numpy(), again[1, 2][0].numpy())
    np.testing.assert_array_equal(data[1][0].numpy(), data[1, 0][0].numpy())
    assert not np.allclose(data[1, 2][0].numpy(), data[1, 3][0].numpy())
    assert not np.allclose(data[1][0].numpy(), plain[1][0].numpy())
    np.testing.assert_array_equal(plain[1, 0][0].numpy(), plain[1, 7][0].numpy())  # no augment: no change


def test_training_set_is_augmented_test_set_is_not(tmp_path: Path) -> None:
    train = write_audio(tmp_path / "train", per_class=2)
    test = write_audio(tmp_path / "test", per_class=1, seed=1)
    raw = {
        "name": "x",
        "out_dir": str(tmp_path / "run"),
        "model": {"preset": "micro-audio"},
        "data": {"train": str(train), "test": str(test), "modality": "audio", "augment": {"noise_p": 1.0}},
        "stages": [{"kind": "pretrain", "steps": 1}],
    }
    ctx = prepare_run(recipe_from_dict(raw), init_from_env(), reuse_config=False)
    assert ctx.train_set.augment is not None
    assert ctx.test_set is not None and ctx.test_set.augment is None
    off = prepare_run(
        recipe_from_dict({**raw, "data": {**raw["data"], "augment": {}}}), init_from_env(), False
    )
    assert off.train_set.augment is None


def test_settings_dataclass_round_trips() -> None:
    settings = AudioAugmentSettings.from_dict({"noise_snr_db": [0, 10], "noise_p": 0.25})
    assert settings.noise_snr_db == (0.0, 10.0)
    assert AudioAugmentSettings.from_dict(dataclasses.asdict(settings)) == settings
