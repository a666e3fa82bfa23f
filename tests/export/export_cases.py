"""Constants the export tests share with their fixtures (conftest.py)."""

import dataclasses

from bridle.model.config import ModelConfig, VideoInput, preset

LABELS = ["cat", "dog", "bird"]
MICRO_PRESETS = ("micro-audio", "micro-image", "micro-video")
VIDEO_CLIP_SECONDS = 3.0  # not the default, so the manifest shows it comes from the config


def micro_config(name: str) -> ModelConfig:
    cfg = preset(name)
    if isinstance(cfg.input, VideoInput):
        cfg = cfg.replace(input=dataclasses.replace(cfg.input, clip_seconds=VIDEO_CLIP_SECONDS))
    return cfg
