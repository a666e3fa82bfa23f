"""BRIDLE model core: configs, decoding, preprocessing and the four networks (E, D, T, TE).

This package's `__init__` imports no torch, so the service can use `bridle.model.config` and
`bridle.model.decoding` with ONNX Runtime alone. Import the torch modules by name.
"""

from bridle.model.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "ModelConfig", "preset"]
