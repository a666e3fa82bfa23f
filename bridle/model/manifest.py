"""`manifest.json`: the contract between an exported model directory and the service.

A model directory holds `manifest.json`, `encoder.onnx` and `tokenizer.onnx`, and may hold
`features.onnx` (the encoder's preprocessing alone; docs/contracts.md). The
manifest names the graphs' inputs and outputs with their shapes, the input window, the labels, the
quantizer's size, the sha256 of every file and where the weights came from. The service reads all of
that from here and from nothing else.

Standard library only (no torch, no onnx): the service imports this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridle.model.atomic import atomic_write_bytes
from bridle.model.config import ImageProcessing, ModelConfig, Precision
from bridle.model.errors import BridleError
from bridle.model.modalities import modality_names, spec_for

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")  # a model directory's graphs
GRAPHS = ("encoder", "tokenizer")  # every model directory holds both
# optional: the encoder's preprocessing alone, signal -> `features` (bridle/export/features.py); older
# directories lack it
FEATURES_GRAPH = "features"
FEATURES_FILE = "features.onnx"
CLASSIFIER_ACTIVATIONS = ("softmax", "sigmoid")
WINDOWING = "inputs longer than one window are cut into windows by the caller (the service)"

Dim = int | str  # a fixed size, or the name of a dynamic axis ("batch")


class ManifestError(BridleError, ValueError):
    """A model directory or its manifest is missing, malformed or does not match its files."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type ("float32", "int64", "uint8") and shape."""

    name: str
    dtype: str
    shape: list[Dim]


@dataclass(frozen=True)
class GraphFile:
    """One ONNX file of the directory, its hash and its signature."""

    path: str  # relative to the model directory
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def output(self, name: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.name == name), None)


@dataclass(frozen=True)
class InputSpec:
    """The graphs' one input `signal` and the window of media it stands for."""

    name: str
    dtype: str
    shape: list[Dim]
    sample_rate: int | None = None  # audio
    num_frames: int | None = None  # audio: fbank frames per window
    image_size: int | None = None  # image, video
    clip_frames: int | None = None  # video: frames per clip (T)
    window_seconds: float | None = None  # audio: window length; video: clip length; image: None
    # an imported model's own preprocessing (bridle/importers/hf.py), each written only when present, so older
    # manifests (without them) read and write back unchanged and decode as before:
    processing: ImageProcessing | None = None  # image, video: the processor's resize and crop
    frame_sampling: str | None = None  # video: "nearest" (None) or "floor" (bridle/model/decoding.py)
    pad: str | None = None  # audio: "waveform" (None) or "fbank" (bridle/model/windowing.py)


@dataclass(frozen=True)
class QuantizerSpec:
    levels: int
    codebook_size: int
    dim: int


@dataclass(frozen=True)
class ClassifierSpec:
    """How the service turns the `logits` output into scores."""

    activation: str = "softmax"  # "softmax": scores sum to 1 over the labels; "sigmoid": independent labels


@dataclass(frozen=True)
class Manifest:
    name: str
    modality: str
    input: InputSpec
    patch_grid: list[int]
    grid_axes: list[str]
    embedding_dim: int
    quantizer: QuantizerSpec
    tokenizer_kind: str  # "random" | "trained"
    labels: list[str]
    opset: int
    files: dict[str, GraphFile]  # "encoder", "tokenizer" [, "features"]
    model_config: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    windowing: str = WINDOWING
    precision: Precision = "fp32"  # of the transformer's matrix products: "fp32", "int8" (CPU), "fp16" (GPU)
    gate: dict[str, Any] | None = None  # a lower-precision variant's accuracy gate (bridle/export/gate.py)
    # an id per label, in the labels' order (an imported AudioSet head: its mids, the labels being the
    # display names); None when the labels are their own ids. Written only when present, so older
    # manifests (without it) read and write back unchanged
    label_ids: list[str] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # hold model_config as its JSON form (lists, not tuples), so a manifest equals its read-back
        object.__setattr__(self, "model_config", json.loads(json.dumps(self.model_config)))

    # ---- convenience ------------------------------------------------------------------------
    @property
    def encoder(self) -> GraphFile:
        return self.files["encoder"]

    @property
    def tokenizer(self) -> GraphFile:
        return self.files["tokenizer"]

    @property
    def features(self) -> GraphFile | None:
        """The optional preprocessing graph (the input as the encoder sees it), if the directory has it."""
        return self.files.get(FEATURES_GRAPH)

    @property
    def has_classifier(self) -> bool:
        return bool(self.labels) and self.encoder.output("logits") is not None

    def config(self) -> ModelConfig:
        """The model's full typed config."""
        try:
            return ModelConfig.from_dict(self.model_config)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"manifest model_config is invalid: {e}") from e

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # the documented key order: format_version and name first
        first = {"format_version": d.pop("format_version"), "name": d.pop("name")}
        if d["label_ids"] is None:
            del d["label_ids"]
        for key in OPTIONAL_INPUT:
            if d["input"][key] is None:
                del d["input"][key]
        return {**first, **d}

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Build and validate a manifest from parsed JSON; raises ManifestError naming the bad field."""
        _require(d, dict, "manifest")
        version = _field(d, "format_version", int, "manifest")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {version} is not supported (expected {FORMAT_VERSION})"
            )
        modality = _field(d, "modality", str, "manifest")
        if modality not in modality_names():
            raise ManifestError(f"manifest modality {modality!r} must be one of {list(modality_names())}")
        files_d = _field(d, "files", dict, "manifest")
        missing = [g for g in GRAPHS if g not in files_d]
        if missing:
            raise ManifestError(f"manifest files lacks {missing}")
        tokenizer_kind = _field(d, "tokenizer_kind", str, "manifest")
        if tokenizer_kind not in ("random", "trained"):
            raise ManifestError(f"manifest tokenizer_kind {tokenizer_kind!r} must be 'random' or 'trained'")
        labels = _field(d, "labels", list, "manifest")
        if not all(isinstance(x, str) for x in labels):
            raise ManifestError("manifest labels must be a list of strings")
        label_ids = _optional(d, "label_ids", list, "manifest")
        if label_ids is not None and (
            len(label_ids) != len(labels) or not all(isinstance(x, str) and x for x in label_ids)
        ):
            raise ManifestError(
                f"manifest label_ids must be a non-empty string per label ({len(labels)}), "
                f"got {label_ids!r:.200}"
            )
        return cls(
            format_version=version,
            name=_field(d, "name", str, "manifest"),
            modality=modality,
            input=_input_spec(_field(d, "input", dict, "manifest"), modality),
            windowing=d.get("windowing", WINDOWING),
            patch_grid=_int_list(_field(d, "patch_grid", list, "manifest"), "manifest patch_grid"),
            grid_axes=[str(a) for a in _field(d, "grid_axes", list, "manifest")],
            embedding_dim=_field(d, "embedding_dim", int, "manifest"),
            quantizer=QuantizerSpec(
                **{
                    k: _field(_field(d, "quantizer", dict, "manifest"), k, int, "manifest quantizer")
                    for k in ("levels", "codebook_size", "dim")
                }
            ),
            tokenizer_kind=tokenizer_kind,
            labels=list(labels),
            label_ids=None if label_ids is None else list(label_ids),
            opset=_field(d, "opset", int, "manifest"),
            files={k: _graph_file(v, f"manifest files.{k}") for k, v in files_d.items()},
            model_config=_field(d, "model_config", dict, "manifest"),
            provenance=dict(d.get("provenance") or {}),
            classifier=_classifier_spec(d.get("classifier", {})),
            precision=_precision(d),
            gate=_optional(d, "gate", dict, "manifest"),
        )


# ---- reading and writing ----------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: str | os.PathLike[str], check_hashes: bool = True) -> Manifest:
    """Read and validate `model_dir/manifest.json`; with `check_hashes` also hash every listed file.

    Raises ManifestError with a message that names the directory and what is wrong.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ManifestError(f"model directory {str(root)!r} does not exist or is not a directory")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{str(root)!r} is not a model directory: {MANIFEST_FILE} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    try:
        manifest = Manifest.from_dict(raw)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from e
    for key, graph in manifest.files.items():
        file = root / graph.path
        if not file.is_file():
            raise ManifestError(f"{root}: the {key} graph {graph.path!r} listed in the manifest is missing")
        if check_hashes:
            actual = sha256_file(file)
            if actual != graph.sha256:
                raise ManifestError(
                    f"{root}: sha256 mismatch for {graph.path!r}: manifest says {graph.sha256}, "
                    f"file has {actual} (the file was changed or corrupted after export)"
                )
    return manifest


def write_manifest(model_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write `model_dir/manifest.json` atomically (temp file + fsync + rename); returns its path."""
    Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))  # refuse to write what we could not read
    path = Path(model_dir) / MANIFEST_FILE
    data = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(path, data)
    return path


# ---- validation helpers -----------------------------------------------------------------------


def _require(value: Any, kind: type, where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where} must be {kind.__name__}, got {type(value).__name__}")


def _field(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where} lacks the field {key!r}")
    _require(d[key], kind, f"{where} field {key!r}")
    return d[key]


def _optional(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = d.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ManifestError(f"{where} field {key!r} has the wrong type {type(value).__name__}")
    return value


def _precision(d: dict[str, Any]) -> Precision:
    precision = d.get("precision", "fp32")  # manifests written before variants existed are float32
    if precision not in PRECISIONS:
        raise ManifestError(f"manifest precision {precision!r} must be one of {list(PRECISIONS)}")
    if precision != "fp32" and not isinstance(d.get("gate"), dict):
        raise ManifestError(f"a {precision} manifest must hold its accuracy gate (field 'gate')")
    return precision


def _classifier_spec(d: Any) -> ClassifierSpec:
    _require(d, dict, "manifest classifier")
    activation = d.get("activation", "softmax")  # manifests written before multi-label heads: softmax
    if activation not in CLASSIFIER_ACTIVATIONS:
        raise ManifestError(
            f"manifest classifier activation {activation!r} must be one of {list(CLASSIFIER_ACTIVATIONS)}"
        )
    return ClassifierSpec(activation=activation)


def _int_list(values: list[Any], where: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ManifestError(f"{where} must be a list of integers")
    return list(values)


def _shape(values: Any, where: str) -> list[Dim]:
    _require(values, list, where)
    if not all((isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str) for v in values):
        raise ManifestError(f"{where} must hold integers and axis names")
    return list(values)


def _tensor(d: Any, where: str) -> TensorSpec:
    _require(d, dict, where)
    return TensorSpec(
        name=_field(d, "name", str, where),
        dtype=_field(d, "dtype", str, where),
        shape=_shape(_field(d, "shape", list, where), f"{where} shape"),
    )


OPTIONAL_INPUT = ("processing", "frame_sampling", "pad")  # InputSpec fields left out when None
INPUT_CHOICES = {"frame_sampling": ("nearest", "floor"), "pad": ("waveform", "fbank")}


def _processing(d: dict[str, Any], where: str) -> ImageProcessing | None:
    value = _optional(d, "processing", dict, where)
    if value is None:
        return None
    try:
        return ImageProcessing.from_dict(value)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where} field 'processing' is invalid: {e}") from e


def _choice(d: dict[str, Any], key: str, where: str) -> str | None:
    value = d.get(key)
    if value is not None and value not in INPUT_CHOICES[key]:
        raise ManifestError(f"{where} field {key!r} must be one of {list(INPUT_CHOICES[key])}, got {value!r}")
    return value


def _input_spec(d: dict[str, Any], modality: str) -> InputSpec:
    where = "manifest input"
    # the input fields the modality's windowing needs: older manifests without them are refused, not guessed
    missing = [key for key in spec_for(modality).required_input if d.get(key) is None]
    if missing:
        raise ManifestError(
            f"{where} of this {modality} model lacks {missing}: it was written by an older exporter, "
            "export the model again"
        )
    window = _optional(d, "window_seconds", (int, float), where)
    return InputSpec(
        name=_field(d, "name", str, where),
        dtype=_field(d, "dtype", str, where),
        shape=_shape(_field(d, "shape", list, where), f"{where} shape"),
        sample_rate=_optional(d, "sample_rate", int, where),
        num_frames=_optional(d, "num_frames", int, where),
        image_size=_optional(d, "image_size", int, where),
        clip_frames=_optional(d, "clip_frames", int, where),
        window_seconds=None if window is None else float(window),
        processing=_processing(d, where),
        frame_sampling=_choice(d, "frame_sampling", where),
        pad=_choice(d, "pad", where),
    )


def _graph_file(d: Any, where: str) -> GraphFile:
    _require(d, dict, where)
    path = _field(d, "path", str, where)
    # a model directory is self-contained: a listed file is a plain name inside it
    if not path or Path(path).name != path or path in (".", ".."):
        raise ManifestError(f"{where} path {path!r} must be a file name inside the model directory")
    return GraphFile(
        path=path,
        sha256=_field(d, "sha256", str, where),
        inputs=[_tensor(t, f"{where} input") for t in _field(d, "inputs", list, where)],
        outputs=[_tensor(t, f"{where} output") for t in _field(d, "outputs", list, where)],
    )
