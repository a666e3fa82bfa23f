"""Model directories for the service tests.

`export_micro(root)` exports the micro presets through the real export path (torch -> ONNX) when it is
importable; `write_contract_model(...)` writes a small model directory straight from ONNX helpers that
follows docs/contracts.md (same inputs, outputs and manifest), for cases that need an odd model quickly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridle_model.config import preset
from bridle_model.manifest import (
    GRID_AXES,
    GraphFile,
    InputSpec,
    Manifest,
    QuantizerSpec,
    TensorSpec,
    write_manifest,
)

LABELS = ["cat", "dog", "eight", "five"]
OPSET = 18
IR_VERSION = 10  # ONNX Runtime 1.31 loads IR <= 13; onnx 1.23 writes 14 by default


def export_micro(root: Path) -> dict[str, Path]:
    """micro-audio / micro-image / micro-video exported with bridle's exporter; modality -> directory."""
    from bridle_model.checkpoint import build_servable
    from export.model_dir import export_model_dir

    out = {}
    for i, modality in enumerate(("audio", "image", "video")):
        servable = build_servable(preset(f"micro-{modality}"), labels=LABELS, seed=i)
        window = 1.0 if modality == "video" else None
        result = export_model_dir(
            servable,
            root / f"micro-{modality}",
            name=f"micro-{modality}",
            window_seconds=window,
            run_verify=False,
        )
        out[modality] = result.model_dir
    return out


def _signal(modality: str) -> tuple[int, list[int], int]:
    """(onnx element type, shape without batch, window_samples or 0) of a micro preset."""
    cfg = preset(f"micro-{modality}")
    if modality == "audio":
        return TensorProto.FLOAT, [cfg.input.window_samples], cfg.input.window_samples
    if modality == "image":
        return TensorProto.UINT8, [3, cfg.input.image_size, cfg.input.image_size], 0
    return TensorProto.UINT8, [cfg.input.num_frames, 3, cfg.input.image_size, cfg.input.image_size], 0


def _save(graph: onnx.GraphProto, path: Path) -> GraphFile:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        dtype = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8", TensorProto.INT64: "int64"}
        return TensorSpec(v.name, dtype[v.type.tensor_type.elem_type], dims)

    return GraphFile(
        path=path.name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        inputs=[spec(v) for v in graph.input],
        outputs=[spec(v) for v in graph.output],
    )


def write_contract_model(
    directory: Path, modality: str, name: str, labels: list[str] | None = None, seed: int = 0
) -> Path:
    """A model directory for the micro preset of `modality`: linear maps of the signal cut into N patches."""
    labels = LABELS if labels is None else labels
    cfg = preset(f"micro-{modality}")
    elem, shape, _ = _signal(modality)
    n, d = cfg.num_patches, cfg.encoder.dim
    levels, k, qdim = cfg.quantizer.levels, cfg.quantizer.codebook_size, cfg.quantizer.dim
    per_patch = int(np.prod(shape)) // n
    rng = np.random.default_rng(seed)
    w = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1)  # noqa: E731
    directory.mkdir(parents=True, exist_ok=True)
    signal = helper.make_tensor_value_info("signal", elem, ["batch", *shape])
    shape_np = numpy_helper.from_array(np.array([0, n, per_patch], dtype=np.int64), "patch_shape")

    def patches(prefix: str) -> list[onnx.NodeProto]:  # signal -> (B, N, P) float
        return [
            helper.make_node("Cast", ["signal"], [f"{prefix}f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", [f"{prefix}f", "patch_shape"], [f"{prefix}p"]),
        ]

    enc_w, cls_w = w(per_patch, d), w(d, len(labels))
    enc_w.name, cls_w.name = "enc_w", "cls_w"
    enc_nodes = [
        *patches("e"),
        helper.make_node("MatMul", ["ep", "enc_w"], ["patch_embeddings"]),  # (B, N, D)
        helper.make_node("ReduceMean", ["patch_embeddings", "axis1"], ["embedding"], keepdims=0),  # (B, D)
    ]
    outputs = [
        helper.make_tensor_value_info("patch_embeddings", TensorProto.FLOAT, ["batch", n, d]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d]),
    ]
    inits = [shape_np, enc_w, numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    if labels:
        enc_nodes.append(helper.make_node("MatMul", ["embedding", "cls_w"], ["logits"]))  # (B, C)
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)]))
        inits.append(cls_w)
    encoder = _save(
        helper.make_graph(enc_nodes, "encoder", [signal], outputs, inits), directory / "encoder.onnx"
    )

    q_w, s_w = w(per_patch, qdim), w(qdim, levels * k)
    q_w.name, s_w.name = "q_w", "s_w"
    code_shape = numpy_helper.from_array(np.array([0, n, levels, k], dtype=np.int64), "code_shape")
    tok_nodes = [
        *patches("t"),
        helper.make_node("MatMul", ["tp", "q_w"], ["quantized"]),  # (B, N, qdim)
        helper.make_node("MatMul", ["quantized", "s_w"], ["scores"]),  # (B, N, L*K)
        helper.make_node("Reshape", ["scores", "code_shape"], ["scores4"]),  # (B, N, L, K)
        helper.make_node("ArgMax", ["scores4"], ["codes"], axis=-1, keepdims=0),  # (B, N, L) int64
    ]
    tok_out = [
        helper.make_tensor_value_info("codes", TensorProto.INT64, ["batch", n, levels]),
        helper.make_tensor_value_info("quantized", TensorProto.FLOAT, ["batch", n, qdim]),
    ]
    tokenizer = _save(
        helper.make_graph(tok_nodes, "tokenizer", [signal], tok_out, [shape_np, q_w, s_w, code_shape]),
        directory / "tokenizer.onnx",
    )

    inp = cfg.input
    if modality == "audio":
        seconds = inp.window_samples / inp.sample_rate
        spec = InputSpec("signal", "float32", ["batch", *shape], sample_rate=inp.sample_rate,
                         num_frames=inp.num_frames, window_seconds=seconds)  # fmt: skip
    elif modality == "image":
        spec = InputSpec("signal", "uint8", ["batch", *shape], image_size=inp.image_size)
    else:
        spec = InputSpec("signal", "uint8", ["batch", *shape], image_size=inp.image_size,
                         clip_frames=inp.num_frames, window_seconds=1.0)  # fmt: skip
    manifest = Manifest(
        name=name,
        modality=modality,
        input=spec,
        patch_grid=list(cfg.grid),
        grid_axes=GRID_AXES[modality],
        embedding_dim=d,
        quantizer=QuantizerSpec(levels, k, qdim),
        tokenizer_kind="random",
        labels=list(labels),
        opset=OPSET,
        files={"encoder": encoder, "tokenizer": tokenizer},
        model_config=cfg.to_dict(),
        provenance={"recipe": "tests/service contract model"},
    )
    write_manifest(directory, manifest)
    return directory
