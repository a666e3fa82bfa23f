"""The export of the two servable graphs (bridle/model/graphs.py: `EncoderGraph`, `TokenizerGraph`) to ONNX:
opset and IR version, the input's name and batch axis, and the manifest's description of each graph file."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch import nn

from bridle.model.config import ModelConfig
from bridle.model.manifest import GraphFile, TensorSpec, sha256_file

OPSET = 18  # the default: every execution provider runs it
OPSETS = range(18, 24)  # 23 adds fused Attention and Gelu ops (about 10 % faster on CPU; see bench.export)
IR_VERSION = 10  # onnx 1.23 writes IR 14; ONNX Runtime 1.31 loads at most 13 (opset 23 needs 11)
ORT_MAX_IR_VERSION = 13
INPUT_NAME = "signal"
BATCH_AXIS = "batch"


def signal_spec(config: ModelConfig) -> tuple[torch.dtype, tuple[int, ...]]:
    """The dtype and per-example shape (batch axis left out) of the graphs' input `signal`."""
    inp = config.input  # audio (samples,) float32; image (3, S, S), video (T, 3, S, S) uint8
    return getattr(torch, inp.signal_dtype), inp.signal_shape()


def example_signal(config: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random input of the right dtype and shape (tracing only: values do not matter)."""
    dtype, shape = signal_spec(config)
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
    return 0.1 * torch.randn((batch, *shape), generator=g)


def export_graph(
    graph: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], opset: int = OPSET
) -> None:
    """Export `graph` to a single ONNX file (dynamic batch axis, an IR version ORT can load)."""
    if opset not in OPSETS:
        raise ValueError(f"opset {opset} is not supported; choose {OPSETS.start}..{OPSETS.stop - 1}")
    if example.shape[0] < 2:
        raise ValueError("trace with a batch of at least 2, or torch.export specialises the batch axis to 1")
    graph.eval()
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter is chatty about deprecations that are not ours
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(graph.output_names),
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    _name_batch_axis(model)
    model.ir_version = max(IR_VERSION, onnx.helper.find_min_ir_version_for(list(model.opset_import)))
    assert model.ir_version <= ORT_MAX_IR_VERSION, model.ir_version
    onnx.save_model(model, str(Path(path)), save_as_external_data=False)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's logging (e.g. "torchvision is not installed") while it runs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _name_batch_axis(model: onnx.ModelProto) -> None:
    """Call the leading symbolic axis of every input and output "batch" (the exporter says "s0" etc.)."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = BATCH_AXIS


# ---- reading a graph's signature ------------------------------------------------------------------

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT32: "int32",
}


def graph_file(model_dir: Path, path: str) -> GraphFile:
    """Hash and signature of one ONNX file, the signature read from the graph itself."""
    model = onnx.load(str(model_dir / path), load_external_data=False)
    return GraphFile(
        path=path,
        sha256=sha256_file(model_dir / path),
        inputs=[tensor_spec(v) for v in model.graph.input],
        outputs=[tensor_spec(v) for v in model.graph.output],
    )


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """Name, element type and shape (ints, or axis names for symbolic dims) of a graph input/output."""
    tensor_type = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)
