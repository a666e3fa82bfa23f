"""ONNX Runtime sessions for the model directories, on the best execution provider that really works.

`onnxruntime-gpu` lists CUDA even on a machine without a GPU and falls back to the CPU with a logged
failure when asked for it. So the choice is checked on a real session: ask for CUDA (and TensorRT when
enabled), then look at `session.get_providers()`; when CUDA did not load, every later session uses the CPU
without asking again. `BRIDLE_PROVIDERS` overrides the probe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bridle_model.manifest import MANIFEST_FILE, Manifest, ManifestError, read_manifest

log = logging.getLogger("bridle.service")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ORT_ERROR_SEVERITY = 3  # log errors only (the CUDA probe's failed load is expected on CPU machines)
NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}


class ModelLoadError(RuntimeError):
    """A model directory could not be loaded: the service must not start."""


def find_model_dirs(paths: list[Path]) -> list[Path]:
    """Each path is a model directory (holds manifest.json) or a folder of model directories."""
    found: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise ModelLoadError(f"model directory {str(p)!r} does not exist or is not a directory")
        if (p / MANIFEST_FILE).exists():
            found.append(p)
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST_FILE).exists())
        if not children:
            raise ModelLoadError(f"{str(p)!r} holds no model directory (no {MANIFEST_FILE} in it or below)")
        found.extend(children)
    return found


@dataclass
class ProviderChooser:
    """Decides the provider list for sessions; probes CUDA once on the first session."""

    override: list[str] = field(default_factory=list)
    use_tensorrt: bool = False
    _cuda_works: bool | None = None

    def requested(self) -> list[str]:
        if self.override:
            unknown = [p for p in self.override if p not in ort.get_available_providers()]
            if unknown:
                raise ModelLoadError(
                    f"BRIDLE_PROVIDERS names {unknown}, not available in this onnxruntime "
                    f"(available: {ort.get_available_providers()})"
                )
            return list(self.override)
        available = ort.get_available_providers()
        if self._cuda_works is False or CUDA not in available:
            return [CPU]
        wanted = [TENSORRT] if self.use_tensorrt and TENSORRT in available else []
        return [*wanted, CUDA, CPU]

    def session(self, path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
        providers = self.requested()
        probing = self._cuda_works is None and CUDA in providers and not self.override
        if probing:
            ort.set_default_logger_severity(ORT_ERROR_SEVERITY + 1)  # silence the expected failed load
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        finally:
            if probing:
                ort.set_default_logger_severity(ORT_ERROR_SEVERITY)
        if probing:
            self._cuda_works = CUDA in session.get_providers()
            log.info(
                "CUDA execution provider %s", "loaded" if self._cuda_works else "did not load: using the CPU"
            )
        return session


@dataclass
class LoadedModel:
    """One model directory: its manifest and its two sessions."""

    directory: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]  # "encoder", "tokenizer"

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def providers(self) -> list[str]:
        return self.sessions["encoder"].get_providers()

    def run(self, graph: str, signal: np.ndarray) -> dict[str, np.ndarray]:
        """One ORT run of `graph` on a batch `signal` (B, ...); outputs by name, each (B, ...)."""
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(names, {self.manifest.input.name: signal})
        return dict(zip(names, outputs, strict=True))

    def dummy_batch(self, batch: int = 1) -> np.ndarray:
        """Zeros of the graphs' input shape (warm-up)."""
        shape = [batch] + [int(d) for d in self.manifest.input.shape[1:]]
        return np.zeros(shape, dtype=NUMPY_DTYPES[self.manifest.input.dtype])


@dataclass(frozen=True)
class CpuThreads:
    """How one session's runs use the CPU cores."""

    intra_op: int = 0  # threads per run; 0: ORT's default, one per core
    spin: bool = False  # idle threads busy-wait for work: faster alone, slower beside the event loop


def session_options(threads: CpuThreads) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = ORT_ERROR_SEVERITY
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads.spin else "0")
    if threads.intra_op:
        options.intra_op_num_threads = threads.intra_op
    return options


def load_model(directory: Path, chooser: ProviderChooser, threads: CpuThreads = CpuThreads()) -> LoadedModel:
    """Read and hash-check the manifest, open both graphs, check their input against the manifest."""
    try:
        manifest = read_manifest(directory, check_hashes=True)
    except ManifestError as e:
        raise ModelLoadError(str(e)) from e
    if manifest.input.dtype not in NUMPY_DTYPES or any(
        not isinstance(d, int) for d in manifest.input.shape[1:]
    ):
        raise ModelLoadError(f"{directory}: unsupported input {manifest.input.dtype} {manifest.input.shape}")
    sessions = {}
    for graph, spec in manifest.files.items():
        try:
            sessions[graph] = chooser.session(directory / spec.path, session_options(threads))
        except Exception as e:  # ORT raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{directory}: ONNX Runtime cannot load {spec.path!r}: {e}") from e
        inputs = [i.name for i in sessions[graph].get_inputs()]
        if inputs != [manifest.input.name]:
            raise ModelLoadError(
                f"{directory}: {spec.path} takes {inputs}, the manifest says {manifest.input.name!r}"
            )
    if manifest.has_classifier and "logits" not in [o.name for o in sessions["encoder"].get_outputs()]:
        raise ModelLoadError(f"{directory}: the manifest has labels but encoder.onnx has no 'logits' output")
    return LoadedModel(directory=directory, manifest=manifest, sessions=sessions)


def load_models(
    paths: list[Path],
    chooser: ProviderChooser,
    threads: CpuThreads = CpuThreads(),
    precision: Sequence[str] = ("fp32",),
) -> dict[str, LoadedModel]:
    """Every model under `paths`, by manifest name: one directory per name, the variant `precision`
    prefers where there are several (`choose_variants`)."""
    models: dict[str, LoadedModel] = {}
    for directory in choose_variants(find_model_dirs(paths), precision):
        model = load_model(directory, chooser, threads)
        models[model.name] = model
        log.info(
            "loaded %s (%s, %s) from %s on %s",
            model.name,
            model.manifest.modality,
            model.manifest.precision,
            directory,
            model.providers[0],
        )
    return models


def choose_variants(directories: list[Path], precision: Sequence[str]) -> list[Path]:
    """One directory per model name. A model with one directory is loaded whatever its precision; of a
    model's several variants (fp32, int8, fp16 siblings), the first precision in `precision` that exists.
    Two directories of one name and one precision, or variants none of which is preferred, are errors."""
    variants: dict[str, dict[str, Path]] = {}
    for directory in directories:
        try:
            manifest = read_manifest(directory, check_hashes=False)  # load_model checks the hashes
        except ManifestError as e:
            raise ModelLoadError(str(e)) from e
        same = variants.setdefault(manifest.name, {})
        if manifest.precision in same:
            raise ModelLoadError(
                f"two model directories are named {manifest.name!r}, both {manifest.precision}: "
                f"{same[manifest.precision]} and {directory}"
            )
        same[manifest.precision] = directory
    chosen = []
    for name, by_precision in variants.items():
        if len(by_precision) == 1:
            chosen.append(next(iter(by_precision.values())))
            continue
        preferred = next((p for p in precision if p in by_precision), None)
        if preferred is None:
            raise ModelLoadError(
                f"model {name!r} has {sorted(by_precision)} variants and BRIDLE_PRECISION {list(precision)} "
                "names none of them"
            )
        chosen.append(by_precision[preferred])
    return chosen
