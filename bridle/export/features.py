"""`features.onnx`: the encoder's preprocessing alone, cut out of `encoder.onnx`.

The graph takes the same `signal` as the encoder and outputs `features`, the tensor the encoder's patch
embedding reads: audio the normalised log-mel fbank (batch, 1, frames, mel), image the normalised
pixels (batch, 3, S, S), video (batch, 3, T, S, S). It is the encoder's own subgraph (ONNX's
`Extractor`), not a second implementation, so the service can show the input as the model saw it.

It is written at export time (`export_model_dir`) and can be added to an existing model directory,
which updates its manifest (`add_features`, `bridle-export features MODEL_DIR`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx
from onnx import helper

from bridle.export.onnx_graphs import BATCH_AXIS, INPUT_NAME, graph_file
from bridle.model.atomic import atomic_write_bytes
from bridle.model.manifest import FEATURES_FILE, FEATURES_GRAPH, Manifest, read_manifest, write_manifest

FEATURES_OUTPUT = "features"
ENCODER_SCOPE = "encoder."  # the encoder network's weights: the first node reading one is the patch embedding
ENCODER_RELAYOUT_OPS = ("Transpose",)


class FeaturesError(ValueError):
    """The encoder graph's preprocessing output cannot be found, or the directory cannot take it."""


def features_tensor(model: onnx.ModelProto) -> str:
    """The name of the tensor the encoder network reads first: the preprocessing's output.

    The graph's nodes are in topological order; the first one that reads an encoder weight (the patch
    embedding's convolution) reads the preprocessed input as its first input, or a transpose of it."""
    weights = {t.name for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if any(name in weights and name.startswith(ENCODER_SCOPE) for name in node.input[1:]):
            tensor = node.input[0]
            # a re-layout the encoder applies to its input first (an imported AST reads (mel, frames))
            # belongs to the encoder; no preprocessing ends with a Transpose
            while tensor in producers and producers[tensor].op_type in ENCODER_RELAYOUT_OPS:
                tensor = producers[tensor].input[0]
            return tensor
    raise FeaturesError(f"no node of the graph reads an {ENCODER_SCOPE}* weight: no patch embedding found")


def extract_features(encoder_path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The subgraph of `encoder_path` from `signal` to its preprocessing output, renamed `features`."""
    model = onnx.load(str(encoder_path))
    tensor = features_tensor(model)
    sub = onnx.utils.Extractor(model).extract_model([INPUT_NAME], [tensor])
    sub.graph.node.append(helper.make_node("Identity", [tensor], [FEATURES_OUTPUT], name="features"))
    out = sub.graph.output[0]
    out.name = FEATURES_OUTPUT
    dims = out.type.tensor_type.shape.dim
    if dims and not dims[0].dim_value:
        dims[0].dim_param = BATCH_AXIS
    sub.ir_version, sub.producer_name = model.ir_version, "bridle-export features"
    del sub.opset_import[:]
    sub.opset_import.extend(model.opset_import)
    onnx.checker.check_model(sub)
    return sub


def write_features(model_dir: Path, encoder_file: str = "encoder.onnx") -> None:
    """Write `model_dir/features.onnx`, cut out of the directory's encoder graph `encoder_file`."""
    sub = extract_features(model_dir / encoder_file)
    atomic_write_bytes(model_dir / FEATURES_FILE, sub.SerializeToString())


def add_features(model_dir: str | os.PathLike[str]) -> Manifest:
    """Add (or rewrite) `features.onnx` in an existing, hash-checked model directory and record it in the
    manifest; returns the new manifest."""
    root = Path(model_dir)
    manifest = read_manifest(root, check_hashes=True)
    write_features(root, manifest.encoder.path)
    files = {**manifest.files, FEATURES_GRAPH: graph_file(root, FEATURES_FILE)}
    updated = dataclasses.replace(manifest, files=files)
    write_manifest(root, updated)
    return updated
