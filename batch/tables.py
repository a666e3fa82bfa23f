"""The two output tables as Arrow: the windows one model read, and the files that could not be used.

windows (one row per window):
    path        string                       the source file
    window      int32                        the window's index in its file
    start, end  float64 (null for images)    the window's span in seconds, as the service reports it
    duration    float64 (null for images)    seconds of media in the file
    embedding   fixed_size_list<float32, D>  the encoder's pooled embedding (not normalised)
    codes       fixed_size_list<fixed_size_list<uintX, N>, L>
                                             codes[l][n]: level l of the patch at row-major index n over
                                             the patch grid; uint8 / uint16 / uint32 by codebook size
    labels      list<string>  (classifier models only) the top-k labels, best first
    scores      list<float64> (classifier models only) their scores as /classify gives them: softmax
                                             probabilities, or sigmoid ones for a multi-label model

The schema metadata key `bridle` holds the model's name, modality, patch grid, grid axes, levels,
codebook size and tokenizer kind.

errors: path, code (a decoding code: empty, corrupt, unsupported, too_long, too_large, no_frames;
or unreadable, no_model), message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bridle_model.manifest import Manifest
from bridle_model.scores import scores  # /classify's scores: softmax, or sigmoid when multi-label

ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("code", pa.string()), ("message", pa.string())])


@dataclass(frozen=True)
class WindowMeta:
    """Where one window comes from."""

    path: str
    window: int
    start: float | None
    end: float | None
    duration: float | None


def codes_dtype(codebook_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds every code 0..codebook_size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"codebook size {codebook_size} does not fit 32 bits")


def _fixed(values: np.ndarray) -> pa.Array:
    """(R, a, b, ...) -> nested fixed-size lists of R rows."""
    array: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def windows_table(
    manifest: Manifest,
    meta: list[WindowMeta],
    embedding: np.ndarray,  # (R, D) float32
    codes: np.ndarray,  # (R, N, L) int64, as tokenizer.onnx gives them
    logits: np.ndarray | None,  # (R, C) float32 when the model has a classifier
    top_k: int,
) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "path": pa.array([m.path for m in meta], pa.string()),
        "window": pa.array([m.window for m in meta], pa.int32()),
        "start": pa.array([m.start for m in meta], pa.float64()),
        "end": pa.array([m.end for m in meta], pa.float64()),
        "duration": pa.array([m.duration for m in meta], pa.float64()),
        "embedding": _fixed(embedding.astype(np.float32)),
        "codes": _fixed(codes.transpose(0, 2, 1).astype(codes_dtype(manifest.quantizer.codebook_size))),
    }
    if logits is not None:
        probs = scores(logits.astype(np.float64), manifest.classifier.activation)  # (R, C)
        k = min(top_k, len(manifest.labels))
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # (R, k)
        columns["labels"] = pa.array(
            [[manifest.labels[i] for i in row] for row in order], pa.list_(pa.string())
        )
        columns["scores"] = pa.array(list(np.take_along_axis(probs, order, axis=-1)), pa.list_(pa.float64()))
    about = {
        "model": manifest.name,
        "modality": manifest.modality,
        "patch_grid": manifest.patch_grid,
        "grid_axes": manifest.grid_axes,
        "levels": manifest.quantizer.levels,
        "codebook_size": manifest.quantizer.codebook_size,
        "tokenizer_kind": manifest.tokenizer_kind,
        "codes_layout": "codes[l][n]: level l of the patch at row-major index n over patch_grid",
    }
    return pa.table(columns).replace_schema_metadata({"bridle": json.dumps(about)})


def errors_table(errors: list[tuple[str, str, str]]) -> pa.Table:
    """(path, code, message) rows."""
    path, code, message = (list(c) for c in zip(*errors, strict=True)) if errors else ([], [], [])
    return pa.table({"path": path, "code": code, "message": message}, schema=ERRORS_SCHEMA)
