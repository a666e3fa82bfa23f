"""Training-time augmentation, set in a recipe's `data.augment` and applied by `MediaDataset`.

    Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
    build_augment(modality, settings, cfg) -> Augment | None      (None when `settings` is empty)
    augment_settings(modality, settings) -> the typed settings     (validates a recipe at load time)

An augmenter takes the decoded array of one example and a generator, and returns the augmented array of
the same kind: audio the whole float32 waveform (samples,) at the model's rate, before the window is cut;
images the decoded (3, S, S) uint8 array. The data set draws the generator per example as
`np.random.default_rng([augment_seed, epoch, index])`, so augmentation is deterministic per seed and epoch
and independent of the worker count. Only training sets get an augmenter; evaluation sets never do.

Each modality's spec (bridle/model/modalities.py) names its augmenter ("module:Class", e.g.
bridle/training/audio_augment.py's `AudioAugment`), resolved here; the class has `Settings` (an
`AugmentSettings`, bridle/training/augment_settings.py) and is built as cls(settings, cfg).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridle.model.config import ModelConfig
from bridle.model.errors import BridleError
from bridle.model.modalities import load_named, modality_names, spec_for
from bridle.training.augment_settings import Augment


class AugmentError(BridleError, ValueError):
    """Augmentation settings that do not fit the modality."""


def _augmenter(modality: str) -> Any:
    """The augmenter class `modality`'s spec names (UnknownModality for a modality not registered)."""
    name = spec_for(modality).augmenter
    if name is None:
        with_one = sorted(m for m in modality_names() if spec_for(m).augmenter is not None)
        raise AugmentError(f"no augmentation for {modality!r} data; only for {with_one}")
    return load_named(name)


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
