"""Checkpoint -> model directory (`encoder.onnx`, `tokenizer.onnx`, `features.onnx`, `manifest.json`).

The directory is built in a temporary folder beside the target, verified (hashes, ONNX checker, ONNX
Runtime, PyTorch vs ORT parity) and renamed into place only when verification passes: a model directory
that exists is complete and verified.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridle.export.features import write_features
from bridle.export.onnx_graphs import (
    INPUT_NAME,
    OPSET,
    OPSETS,
    example_signal,
    export_graph,
    graph_file,
)
from bridle.export.verify import VerifyReport, verify
from bridle.model.atomic import write_directory_atomically
from bridle.model.checkpoint import Servable, load_servable
from bridle.model.errors import BridleError
from bridle.model.graphs import EncoderGraph, TokenizerGraph
from bridle.model.manifest import (
    FEATURES_FILE,
    FEATURES_GRAPH,
    ClassifierSpec,
    InputSpec,
    Manifest,
    QuantizerSpec,
    write_manifest,
)
from bridle.model.modalities import spec_for

GRAPH_FILES = {"encoder": "encoder.onnx", "tokenizer": "tokenizer.onnx", FEATURES_GRAPH: FEATURES_FILE}


class ExportError(BridleError, RuntimeError):
    """The export could not produce a verified model directory."""

    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    manifest: Manifest
    report: VerifyReport | None  # None when verification was skipped


def export_model_dir(
    source: str | os.PathLike[str] | Servable,
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    run_verify: bool = True,
    force: bool = False,
    opset: int | None = None,
) -> ExportResult:
    """Export a servable checkpoint (a directory or a loaded `Servable`) to the model directory `out_dir`.

    The manifest's input window (audio window, video clip length) comes from the model's input config,
    the one training used. `opset`: 18 (default) .. 23. Refuses to
    overwrite a non-empty `out_dir` unless `force`, and to write a directory that fails verification.
    """
    opset = OPSET if opset is None else opset
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose {OPSETS.start}..{OPSETS.stop - 1}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(
            f"output directory {str(out)!r} exists and is not empty (pass force=True / --force)"
        )
    if isinstance(source, Servable):
        servable, checkpoint = source.eval(), str(source.provenance.get("checkpoint", "<in memory>"))
    else:
        servable, checkpoint = load_servable(source), str(Path(source).resolve())
    manifest_name = name or out.resolve().name

    result: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        example = example_signal(servable.config, batch=2)
        export_graph(EncoderGraph(servable), example, tmp / GRAPH_FILES["encoder"], opset)
        export_graph(TokenizerGraph(servable), example, tmp / GRAPH_FILES["tokenizer"], opset)
        write_features(tmp, GRAPH_FILES["encoder"])
        manifest = build_manifest(tmp, servable, manifest_name, checkpoint, opset)
        write_manifest(tmp, manifest)
        result["manifest"] = manifest
        if run_verify:
            report = verify(tmp, servable)
            result["report"] = report
            if not report.ok:
                raise ExportError(
                    f"the exported model failed verification; nothing written\n{report}", report
                )

    write_directory_atomically(out, build)
    if "report" in result:
        result["report"].model_dir = str(out)  # it ran in the temporary directory that became `out`
    return ExportResult(model_dir=out, manifest=result["manifest"], report=result.get("report"))


def build_manifest(
    model_dir: Path,
    servable: Servable,
    name: str,
    checkpoint: str,
    opset: int = OPSET,
) -> Manifest:
    """The manifest of the graphs in `model_dir`: shapes read from the graphs, hashes from the files."""
    cfg = servable.config
    files = {key: graph_file(model_dir, path) for key, path in GRAPH_FILES.items()}
    signal = files["encoder"].inputs[0]
    if signal.name != INPUT_NAME:
        raise ExportError(f"the encoder graph's input is {signal.name!r}, expected {INPUT_NAME!r}")
    embedding = files["encoder"].output("embedding")
    if embedding is None:
        raise ExportError("the encoder graph has no output 'embedding'")

    # the window the signal stands for: the modality's input fields (audio: rate, frames, seconds)
    input_spec = InputSpec(signal.name, signal.dtype, signal.shape, **cfg.input.manifest_fields())

    provenance = dict(servable.provenance)
    if "date" in provenance:
        provenance["trained"] = provenance.pop("date")
    provenance.update(date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), checkpoint=checkpoint)
    for key in ("recipe", "stage", "step"):
        provenance.setdefault(key, None)

    q = cfg.quantizer
    return Manifest(
        name=name,
        modality=cfg.modality,
        input=input_spec,
        patch_grid=list(cfg.grid),
        grid_axes=list(spec_for(cfg.modality).grid_axes),
        embedding_dim=int(embedding.shape[-1]),
        quantizer=QuantizerSpec(levels=q.levels, codebook_size=q.codebook_size, dim=q.dim),
        tokenizer_kind=servable.tokenizer_kind,
        labels=list(servable.labels),
        label_ids=None if servable.label_ids is None else list(servable.label_ids),
        opset=opset,
        files=files,
        model_config=cfg.to_dict(),
        provenance=provenance,
        classifier=ClassifierSpec(activation=cfg.classifier_activation),
    )
