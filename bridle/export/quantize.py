"""A lower-precision sibling of a float32 model directory, written only when it passes its accuracy gate.

    bridle-export quantize models/audio-digits --precision int8 --data data/audio-digits/test
    -> models/audio-digits-int8 (same model name, manifest `precision: "int8"` and its `gate` figures)

Both graphs are converted (bridle/export/precision.py; `features.onnx`, the float32 preprocessing, is
copied), run beside the float32 ones on the held-out data (bridle/export/gate.py), verified
(bridle/export/verify.py), and the directory is renamed into place only when the gate
and the verification pass. The variant keeps
the model's name: the service loads one variant per name, chosen by its `precision` setting.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bridle.export.gate import GateResult, HeldOut, load_held_out, measure_gate
from bridle.export.onnx_graphs import graph_file
from bridle.export.precision import VARIANT_PRECISIONS, convert_graph
from bridle.export.verify import verify
from bridle.model.atomic import write_directory_atomically
from bridle.model.errors import BridleError
from bridle.model.manifest import FEATURES_GRAPH, Manifest, ManifestError, read_manifest, write_manifest


class QuantizeError(BridleError, RuntimeError):
    """The variant could not be made, or failed its gate; nothing was written."""

    def __init__(self, message: str, gate: GateResult | None = None) -> None:
        super().__init__(message)
        self.gate = gate


@dataclass(frozen=True)
class VariantResult:
    model_dir: Path
    manifest: Manifest
    gate: GateResult


def variant_dir(model_dir: str | os.PathLike[str], precision: str) -> Path:
    """The default sibling: `models/audio-digits` -> `models/audio-digits-int8`."""
    source = Path(model_dir).resolve()
    return source.with_name(f"{source.name}-{precision}")


def write_variant(
    model_dir: str | os.PathLike[str],
    precision: str,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    nodes: dict[str, list[str]] | None = None,
) -> VariantResult:
    """Convert the float32 `model_dir` to `precision`, gate it on the held-out `data` and write it to
    `out_dir` (default: the sibling `<model_dir>-<precision>`).

    `nodes`: per graph ("encoder", "tokenizer"), the nodes to convert instead of the ViT blocks' matmuls.
    Raises QuantizeError (nothing written) when the gate fails or the inputs are unusable.
    """
    if precision not in VARIANT_PRECISIONS:
        raise QuantizeError(f"precision {precision!r} is not one of {list(VARIANT_PRECISIONS)}")
    source = Path(model_dir)
    manifest = _float32_manifest(source)
    out = Path(out_dir) if out_dir is not None else variant_dir(source, precision)
    if out.resolve() == source.resolve():
        raise QuantizeError("the variant cannot replace its float32 original; choose another out_dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise QuantizeError(f"output directory {str(out)!r} exists and is not empty (pass --force)")
    try:
        held_out = load_held_out(data, manifest)
    except ValueError as e:
        raise QuantizeError(str(e)) from e
    built: list[tuple[Manifest, GateResult]] = []
    write_directory_atomically(
        out, lambda tmp: built.append(_build_variant(tmp, source, manifest, precision, held_out, nodes))
    )
    variant, gate = built[0]
    return VariantResult(out, variant, gate)


def _float32_manifest(source: Path) -> Manifest:
    """The manifest of a float32 model directory, its files' hashes checked."""
    try:
        manifest = read_manifest(source, check_hashes=True)
    except ManifestError as e:
        raise QuantizeError(str(e)) from e
    if manifest.precision != "fp32":
        raise QuantizeError(
            f"{source} is already an {manifest.precision} variant; start from the float32 one"
        )
    return manifest


def _build_variant(
    tmp: Path,
    source: Path,
    manifest: Manifest,
    precision: str,
    held_out: HeldOut,
    nodes: dict[str, list[str]] | None,
) -> tuple[Manifest, GateResult]:
    """Write the variant into `tmp`: its graphs converted (the features graph copied), gated against the
    float32 graphs on `held_out`, its manifest, and verified. Raises QuantizeError at the first failure."""
    graphs = {}
    for key, spec in manifest.files.items():
        if key == FEATURES_GRAPH:  # the preprocessing stays float32 in every variant: copied as is
            shutil.copyfile(source / spec.path, tmp / spec.path)
            continue
        graphs[key] = tmp / spec.path
        try:
            convert_graph(source / spec.path, graphs[key], precision, (nodes or {}).get(key))
        except ValueError as e:
            raise QuantizeError(f"{key}: {e}") from e
    gate = measure_gate(source, manifest, graphs, held_out)
    if not gate.passed:
        raise QuantizeError(
            f"the {precision} variant failed its gate; nothing written: {'; '.join(gate.failures)}\n"
            f"  {gate.summary()}",
            gate,
        )
    variant = dataclasses.replace(
        manifest,
        files={key: graph_file(tmp, spec.path) for key, spec in manifest.files.items()},
        provenance={**manifest.provenance, "variant_of": str(source.resolve())},
        precision=precision,
        gate=gate.to_dict(),
    )
    write_manifest(tmp, variant)
    report = verify(tmp)  # hashes, ONNX checker, ONNX Runtime, the stored gate
    if not report.ok:
        raise QuantizeError(f"the {precision} variant failed verification; nothing written\n{report}", gate)
    return variant, gate
