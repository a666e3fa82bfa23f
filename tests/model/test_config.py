"""The typed config: presets are consistent, and a config survives a JSON round trip."""

import json

import pytest

from bridle.model.config import PRESETS, AudioInput, ModelConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = PRESETS[name]
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_paper_grids():
    assert preset("base-audio").grid == (64, 8)
    assert preset("base-image").grid == (14, 14)
    assert preset("base-video").grid == (8, 14, 14)
    assert preset("base-video").num_patches == 8 * 14 * 14


def test_audio_window_samples_cover_the_frames():
    # 1024 frames of 25 ms every 10 ms at 16 kHz: 1023 shifts of 160 samples plus one 400-sample frame.
    assert AudioInput(num_frames=1024).window_samples == 1023 * 160 + 400


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="modality"):
        ModelConfig(modality="image", input=AudioInput())
    with pytest.raises(ValueError, match="multiples of patch_size"):
        preset("micro-image", patch_size=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        preset("micro-audio", mask_ratio=1.0)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**preset("micro-audio").to_dict(), "encoder": {"dimension": 3}})
    with pytest.raises(KeyError, match="unknown preset"):
        preset("huge-audio")
