"""`bridle-export`: turn a servable checkpoint into a verified model directory, or verify one.

bridle-export export CHECKPOINT_DIR OUT_DIR [--name NAME] [--opset N] [--no-verify] [--force]
bridle-export verify MODEL_DIR [--checkpoint CHECKPOINT_DIR] [--reference FP32_DIR --data HELD_OUT] [--json]
bridle-export features MODEL_DIR... (add features.onnx, the encoder's preprocessing, to existing directories)
bridle-export quantize MODEL_DIR --precision int8|fp16 --data HELD_OUT [--out OUT_DIR] [--force]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command("export")
def export_command(
    checkpoint_dir: Annotated[
        Path, typer.Argument(help="servable checkpoint (weights.safetensors + config.json)")
    ],
    out_dir: Annotated[Path, typer.Argument(help="model directory to create")],
    name: Annotated[
        str | None, typer.Option(help="model name in the manifest (default: OUT_DIR's name)")
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option(
            help="ONNX opset, 18..23 (default 18: runs everywhere; 23 has fused attention, faster on CPU)"
        ),
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="verify before writing")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing non-empty OUT_DIR")] = False,
) -> None:
    """Export CHECKPOINT_DIR to OUT_DIR (encoder.onnx, tokenizer.onnx, manifest.json)."""
    from bridle.export.model_dir import ExportError, export_model_dir
    from bridle.model.checkpoint import CheckpointError

    try:
        result = export_model_dir(
            checkpoint_dir,
            out_dir,
            name=name,
            run_verify=verify,
            force=force,
            opset=opset,
        )
    except (CheckpointError, ExportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    if result.report is not None:
        typer.echo(str(result.report))
    typer.echo(f"wrote {result.model_dir} ({result.manifest.modality}, {result.manifest.name})")


@app.command("verify")
def verify_command(
    model_dir: Annotated[Path, typer.Argument(help="model directory to check")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="servable checkpoint to compare PyTorch against ONNX Runtime")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="int8/fp16 variants: the float32 model directory to gate against")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="int8/fp16 variants: held-out data (class folders or a CSV/JSONL)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check MODEL_DIR's hashes, graphs and ONNX Runtime outputs (and parity with --checkpoint, or a
    variant's accuracy gate with --reference and --data)."""
    from bridle.export.verify import verify

    if (reference is None) != (data is None):
        typer.echo("error: --reference and --data go together", err=True)
        raise typer.Exit(code=2)
    report = verify(model_dir, checkpoint, reference, data)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else str(report))
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("features")
def features_command(
    model_dirs: Annotated[list[Path], typer.Argument(help="model directories to add features.onnx to")],
) -> None:
    """Cut the preprocessing (signal -> the normalised input the encoder reads) out of each directory's
    encoder graph as features.onnx, and record it in the manifest."""
    from bridle.export.features import FeaturesError, add_features
    from bridle.model.manifest import ManifestError

    for model_dir in model_dirs:
        try:
            manifest = add_features(model_dir)
        except (ManifestError, FeaturesError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=1) from None
        spec = manifest.features
        assert spec is not None
        typer.echo(f"wrote {model_dir / spec.path}: signal -> features {spec.outputs[0].shape}")


@app.command("quantize")
def quantize_command(
    model_dir: Annotated[Path, typer.Argument(help="float32 model directory")],
    precision: Annotated[str, typer.Option(help="int8 (CPU) or fp16 (GPU)")],
    data: Annotated[Path, typer.Option(help="held-out data for the gate (class folders or a CSV/JSONL)")],
    out: Annotated[Path | None, typer.Option(help="variant directory (default: MODEL_DIR-PRECISION)")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing non-empty output directory")] = False,
) -> None:
    """Write MODEL_DIR's int8 or fp16 sibling, only when it passes its accuracy gate on --data."""
    from bridle.export.quantize import QuantizeError, write_variant

    try:
        result = write_variant(model_dir, precision, data, out_dir=out, force=force)
    except QuantizeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"gate passed: {result.gate.summary()}")
    typer.echo(f"wrote {result.model_dir} ({precision} variant of {result.manifest.name})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
