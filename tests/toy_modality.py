"""A fourth modality for the tests, written as a new modality would be: one spec and what it names.

"depth": depth maps, (H, W) float32 metres, stored as NumPy `.npy` files. Its input type says the
shapes; its preprocessor, a torch module, scales metres to the encoder's input (a real one would sit in
bridle/model/preprocessing.py, the spec in bridle/model/modalities.py, which imports no torch); its spec
says how a file is recognised, decoded and windowed. Nothing else in bridle is edited for it: the tests
register the spec (`registered_depth`), and the model, its export, the manifest, the runtime's windows,
the sniffing of an upload, the training data sets, the shards and the export gate take it through the
registry.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bridle.model.decoding import MediaError, Source
from bridle.model.inputs import ModalityInput
from bridle.model.manifest import InputSpec
from bridle.model.modalities import Limits, ModalitySpec, Windows, register, unregister
from bridle.model.windowing import WindowPolicy

NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class DepthInput(ModalityInput):
    """A square depth map of `size` x `size` metres, divided by `max_metres` for the encoder."""

    size: int = 16
    max_metres: float = 10.0

    channels: ClassVar[int] = 1
    signal_dtype: ClassVar[str] = "float32"

    def patched_sizes(self) -> tuple[int, ...]:
        return (self.size, self.size)

    def patch_grid(self, patch: int, tubelet: int) -> tuple[int, ...]:
        return (self.size // patch, self.size // patch)

    def model_input_shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size)

    def signal_shape(self) -> tuple[int, ...]:
        return (self.size, self.size)

    def manifest_fields(self) -> dict[str, Any]:
        return {"image_size": self.size}


class DepthPreprocessor(nn.Module):
    """(B, S, S) metres -> (B, 1, S, S) in [0, 1]: what the spec names as its `preprocessor`."""

    def __init__(self, inp: DepthInput) -> None:
        super().__init__()
        self.max_metres = float(inp.max_metres)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return (signal / self.max_metres).clamp(0.0, 1.0).unsqueeze(1)  # (B, 1, S, S)


def decode_depth(src: Source, size: int | None) -> np.ndarray:
    """A `.npy` depth map -> (size, size) float32 (size None: any square); anything else a MediaError."""
    data = src if isinstance(src, bytes | bytearray | memoryview) else open(src, "rb").read()  # noqa: SIM115
    try:
        depth = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MediaError("corrupt", f"the depth map could not be decoded: {e}") from None
    side = depth.shape[0] if size is None and depth.ndim == 2 else size
    if depth.shape != (side, side):
        raise MediaError("unsupported", f"the depth map is {depth.shape}, the model takes ({side}, {side})")
    return depth.astype(np.float32)


def depth_to_windows(spec: InputSpec, data: bytes, limits: Limits, policy: WindowPolicy) -> Windows:
    depth = decode_depth(data, int(spec.image_size or spec.shape[-1]))
    return Windows(depth[None], [(None, None)], None)  # (1, S, S)


DEPTH = ModalitySpec(
    name="depth",
    input_type=DepthInput,
    suffixes=frozenset({".npy"}),
    content_types=(),  # no MIME type of its own: uploads are told by their magic bytes
    magic=lambda head: head[:6] == NPY_MAGIC,
    decode_example=lambda src, inp: decode_depth(src, inp.size),
    probe=lambda src: decode_depth(src, None),
    to_windows=depth_to_windows,
    grid_axes=("height", "width"),
    required_input=("image_size",),
    reads=("depth",),
    features_layout="(windows, 1, height, width): depth / max_metres, clamped to [0, 1]",
    preprocessor="tests.toy_modality:DepthPreprocessor",
)


def depth_file(seed: int, size: int = 16) -> bytes:
    """A `.npy` depth map: a tilted plane with a box in front of it, (size, size) float32 metres."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    depth = 2.0 + 0.3 * rows + rng.uniform(-1, 1) * 0.1 * cols
    top, left = rng.integers(0, size // 2, 2)
    depth[top : top + size // 3, left : left + size // 3] = rng.uniform(0.5, 1.5)
    out = io.BytesIO()
    np.save(out, depth.astype(np.float32))
    return out.getvalue()


@contextmanager
def registered_depth() -> Iterator[ModalitySpec]:
    """The depth modality registered for the duration of the block."""
    register(DEPTH)
    try:
        yield DEPTH
    finally:
        unregister(DEPTH.name)
