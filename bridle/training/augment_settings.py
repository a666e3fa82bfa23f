"""What every augmenter shares: the `Augment` callable type and `AugmentSettings`, the base of each
modality's settings dataclass (bridle/training/audio_augment.py, bridle/training/image_augment.py); the
registry and the recipe's entry points are bridle/training/augment.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


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
