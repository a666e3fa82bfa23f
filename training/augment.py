"""Training-time augmentation, set in a recipe's `data.augment` and applied by `MediaDataset`.

    Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
    build_augment(modality, settings, cfg) -> Augment | None      (None when `settings` is empty)
    augment_settings(modality, settings) -> the typed settings     (validates a recipe at load time)

An augmenter takes the decoded array of one example and a generator, and returns the augmented array of
the same kind: audio the whole float32 waveform (samples,) at the model's rate, before the window is cut;
images the decoded (3, S, S) uint8 array. The data set draws the generator per example as
`np.random.default_rng([augment_seed, epoch, index])`, so augmentation is deterministic per seed and epoch
and independent of the worker count. Only training sets get an augmenter; evaluation sets never do.

The modality's module is imported lazily: training.audio_augment (AudioAugment), training.image_augment
(ImageAugment).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from bridle_model.config import ModelConfig

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# modality -> (module, augmenter class); the class has `Settings` (a dataclass with `from_dict`) and is
# built as cls(settings, cfg)
AUGMENTERS: dict[str, tuple[str, str]] = {
    "audio": ("training.audio_augment", "AudioAugment"),
    "image": ("training.image_augment", "ImageAugment"),
}


class AugmentError(ValueError):
    """Augmentation settings that do not fit the modality."""


@dataclass(frozen=True)
class AugmentSettings:
    """The base of each modality's settings dataclass: built from a recipe's mapping (unknown keys refused,
    lists read as `(low, high)` ranges), every `<step>_p` a probability and every range ordered. A modality
    adds its own checks in `check`, after `super().check()`."""

    kind: ClassVar[str] = ""  # "audio", "image": named in the errors

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"unknown {cls.kind} augmentation keys {unknown}; allowed: {sorted(fields)}")
        values = {k: tuple(float(x) for x in v) if isinstance(v, list | tuple) else v for k, v in raw.items()}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{f.name} is a probability in [0, 1], got {value!r}")
            if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"{f.name} must be a [low, high] pair with low <= high, got {list(value)}")


def _augmenter(modality: str) -> Any:
    if modality not in AUGMENTERS:
        raise AugmentError(f"no augmentation for {modality!r} data; only for {sorted(AUGMENTERS)}")
    module, name = AUGMENTERS[modality]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise AugmentError(f"{modality} augmentation is not available ({module}.{name}): {e}") from e


def augment_settings(modality: str, settings: Mapping[str, Any]) -> Any:
    """The typed settings of `modality`'s augmenter built from a recipe's `data.augment` mapping."""
    try:
        return _augmenter(modality).Settings.from_dict(dict(settings))
    except (TypeError, ValueError) as e:
        raise AugmentError(f"data.augment: {e}") from e


def build_augment(modality: str, settings: Mapping[str, Any], cfg: ModelConfig) -> Augment | None:
    """The augmenter for `modality` with `settings` (a recipe's `data.augment`), or None when empty."""
    if not settings:
        return None
    return _augmenter(modality)(augment_settings(modality, settings), cfg)
