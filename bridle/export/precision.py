"""Lower-precision copies of an exported graph: int8 for the CPU, fp16 for the GPU.

Only the matrix products of the ViT blocks change precision: the MatMul nodes the exporter placed inside
`bridle.model.transformer.Transformer` (their `namespace` metadata) whose second input is a weight. The
fbank's DFT and mel matmuls, the normalisation, the softmax, the codebook nearest-code search and the
classifier head stay float32: the fbank's matmuls turn small rounding into large log-mel errors, and the
code search decides discrete codes by small margins.

- int8: ONNX Runtime's dynamic quantization (int8 weights per tensor, activations quantized per batch at
  run time). Dynamic rather than static (calibrated) by measurement: `python -m bench.quantize --static`
  prints both; static was not faster on this CPU (within the run-to-run spread) and further from
  float32 on every bundled model (embedding cosine, code agreement).
- fp16: each chosen MatMul gets float16 weights and runs between two Casts, so its neighbours stay float32.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridle.model.config import Precision
from bridle.model.manifest import PRECISIONS

VARIANT_PRECISIONS: tuple[Precision, ...] = PRECISIONS[1:]  # a float32 model's lower-precision variants

# the ViT blocks' module, in node metadata; graphs exported before the package became `bridle.model`
# (the bundled models among them) carry its old name
TRANSFORMER_SCOPES = ("bridle.model.transformer.Transformer", "bridle_model.transformer.Transformer")


def transformer_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes inside the ViT blocks whose second input is a weight (an initializer)."""
    weights = {t.name for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and _in_scope(n, TRANSFORMER_SCOPES)
    ]


def all_matmuls(model: onnx.ModelProto) -> list[str]:
    """Every MatMul and Gemm node with a weight, the fbank's and the code search's included."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]


def convert_graph(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], precision: str, nodes: list[str] | None = None
) -> list[str]:
    """Write `src`'s graph at `precision` to `dst`; `nodes` (default: the ViT blocks' matmuls) change
    precision, nothing else. Returns the names of the nodes converted."""
    if precision not in VARIANT_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(VARIANT_PRECISIONS)}")
    model = plain_model(src)
    chosen = transformer_matmuls(model) if nodes is None else list(nodes)
    if not chosen:
        raise ValueError(f"{src} has no matrix products to convert")
    if precision == "int8":
        _quantize_dynamic(model, Path(dst), chosen)
    else:
        onnx.save(_to_fp16(model, chosen), str(dst))
    return chosen


def plain_model(src: str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph at `src` without the exporter's shape annotations of intermediate values: they can
    contradict ONNX's own shape inference, which the quantizer runs, and they are optional."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    return model


def _quantize_dynamic(model: onnx.ModelProto, dst: Path, nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantizer advises its pre-processing (ONNX Runtime's graph optimizer) on every call; that pass
    # drops the node metadata the matmuls are chosen by, so it is not run and its advice is not shown
    hint = _DropMessage("Please consider to run pre-processing before quantization")
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the quantizer reads a file
            plain = Path(tmp) / "plain.onnx"
            onnx.save(model, str(plain))
            quantize_dynamic(plain, dst, weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    finally:
        root.removeFilter(hint)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _to_fp16(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Each MatMul in `nodes`: float16 weight, input cast to float16, output cast back to float32."""
    chosen = set(nodes)
    weights = {t.name: t for t in model.graph.initializer}
    converted: list[onnx.NodeProto] = []
    half_weights: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in chosen:
            converted.append(node)
            continue
        if node.op_type != "MatMul" or node.input[1] not in weights:
            raise ValueError(f"node {node.name!r} is not a MatMul with a weight")
        weight = node.input[1]
        if weight not in half_weights:
            half = numpy_helper.to_array(weights[weight]).astype(np.float16)
            half_weights[weight] = f"{weight}_fp16"
            model.graph.initializer.append(numpy_helper.from_array(half, half_weights[weight]))
        x16, y16 = f"{node.name}_input_fp16", f"{node.name}_output_fp16"
        converted += [
            helper.make_node(
                "Cast", [node.input[0]], [x16], name=f"{node.name}_to_fp16", to=TensorProto.FLOAT16
            ),
            helper.make_node("MatMul", [x16, half_weights[weight]], [y16], name=node.name),
            helper.make_node("Cast", [y16], node.output, name=f"{node.name}_to_fp32", to=TensorProto.FLOAT),
        ]
    del model.graph.node[:]
    model.graph.node.extend(converted)
    used = {name for n in model.graph.node for name in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _in_scope(node: onnx.NodeProto, scopes: tuple[str, ...]) -> bool:
    return any(p.key == "namespace" and any(s in p.value for s in scopes) for p in node.metadata_props)
