"""The output tables as Arrow: the windows one model read, each file's clip result, and the files that
could not be used.

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
    label_ids   list<string>  (models whose manifest has label_ids) the labels' ids (AudioSet mids)

clips (one row per file, as /embed's and /classify's clip results; bridle/model/windowing.py):
    path, duration                           as above
    windows     int32                        how many windows the file made
    embedding   fixed_size_list<float32, D>  the windows' embeddings' mean, weighted by seconds of signal
    labels, scores[, label_ids]              (classifier models only) the top-k of the clip's scores: the
                                             windows' scores pooled by the job's aggregate (mean, or max
                                             for a multi-label model), named in the schema metadata

The schema metadata key `bridle` of both holds the model's name, modality, patch grid, grid axes, levels,
codebook size and tokenizer kind.

errors: path, code (a decoding code: empty, corrupt, unsupported, too_long, too_large, no_frames;
or unreadable, no_model), message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bridle.model.manifest import Manifest
from bridle.model.scores import scores, top_k_indices  # /classify's: softmax, or sigmoid when multi-label
from bridle.model.windowing import Aggregate, aggregate_for, clip_mean, clip_scores

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
        columns.update(_top_k(manifest, probs, top_k))
    return pa.table(columns).replace_schema_metadata({"bridle": json.dumps(_about(manifest))})


def clips_table(
    manifest: Manifest,
    meta: list[WindowMeta],
    embedding: np.ndarray,  # (R, D) float32
    logits: np.ndarray | None,  # (R, C) float32 when the model has a classifier
    top_k: int,
    aggregate: Aggregate | None,  # None: the head's default (windowing.aggregate_for)
) -> pa.Table:
    """One row per file of `meta` (its windows are consecutive rows): its clip embedding and labels."""
    files = _runs([m.path for m in meta])  # a slice of rows per file
    spans = [[(m.start, m.end) for m in meta[rows]] for rows in files]
    columns: dict[str, pa.Array] = {
        "path": pa.array([meta[rows.start].path for rows in files], pa.string()),
        "duration": pa.array([meta[rows.start].duration for rows in files], pa.float64()),
        "windows": pa.array([rows.stop - rows.start for rows in files], pa.int32()),
        "embedding": _fixed(
            np.stack([clip_mean(embedding[rows], s) for rows, s in zip(files, spans, strict=True)]).astype(
                np.float32
            )
        ),
    }
    about = _about(manifest)
    if logits is not None:
        activation = manifest.classifier.activation
        how = aggregate_for(activation, aggregate)
        probs = scores(logits.astype(np.float64), activation)  # (R, C)
        clips = np.stack([clip_scores(probs[rows], s, how) for rows, s in zip(files, spans, strict=True)])
        columns.update(_top_k(manifest, clips, top_k))
        about["aggregate"] = how
    return pa.table(columns).replace_schema_metadata({"bridle": json.dumps(about)})


def _runs(paths: list[str]) -> list[slice]:
    """The runs of equal consecutive `paths`, as slices."""
    cuts = [i for i in range(1, len(paths)) if paths[i] != paths[i - 1]]
    return [slice(a, b) for a, b in zip([0, *cuts], [*cuts, len(paths)], strict=True)]


def _top_k(manifest: Manifest, probs: np.ndarray, top_k: int) -> dict[str, pa.Array]:
    """(R, C) scores -> the labels, scores (and label ids) columns of each row's top-k."""
    k = min(top_k, len(manifest.labels))
    order = top_k_indices(probs, k)  # (R, k)
    columns = {
        "labels": pa.array([[manifest.labels[i] for i in row] for row in order], pa.list_(pa.string())),
        "scores": pa.array(list(np.take_along_axis(probs, order, axis=-1)), pa.list_(pa.float64())),
    }
    if manifest.label_ids is not None:
        ids = manifest.label_ids
        columns["label_ids"] = pa.array([[ids[i] for i in row] for row in order], pa.list_(pa.string()))
    return columns


def _about(manifest: Manifest) -> dict:
    """The model facts of the schema metadata."""
    return {
        "model": manifest.name,
        "modality": manifest.modality,
        "patch_grid": manifest.patch_grid,
        "grid_axes": manifest.grid_axes,
        "levels": manifest.quantizer.levels,
        "codebook_size": manifest.quantizer.codebook_size,
        "tokenizer_kind": manifest.tokenizer_kind,
        "codes_layout": "codes[l][n]: level l of the patch at row-major index n over patch_grid",
    }


def errors_table(errors: list[tuple[str, str, str]]) -> pa.Table:
    """(path, code, message) rows."""
    path, code, message = (list(c) for c in zip(*errors, strict=True)) if errors else ([], [], [])
    return pa.table({"path": path, "code": code, "message": message}, schema=ERRORS_SCHEMA)
