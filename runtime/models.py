"""Model directories -> loaded models: discovery, precision variants, the manifest, one session per graph.

A model directory holds `manifest.json` and the graphs it names (`encoder.onnx`, `tokenizer.onnx`);
`load_model` hash-checks the manifest's files and opens one ONNX Runtime session per graph, which every
concurrent run on this device shares (ONNX Runtime's `run()` is thread-safe and releases the GIL).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bridle_model.manifest import MANIFEST_FILE, Manifest, ManifestError, read_manifest
from runtime.errors import ModelLoadError
from runtime.sessions import CpuThreads, ProviderChooser, session_options

log = logging.getLogger("bridle.runtime")
# the bundled demo models: `models/` beside the packages in the repository
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models"
NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}


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
class LoadedModel:
    """One model directory: its manifest and its two sessions."""

    directory: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]  # "encoder", "tokenizer" (those this process opened)
    # in a front-end process, whose graphs run in the engine process: the engine's providers and the
    # encoder session's provider options, as the engine said (runtime/client.py)
    engine_info: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def providers(self) -> list[str]:
        if "encoder" in self.sessions:
            return self.sessions["encoder"].get_providers()
        return list(self.engine_info["providers"]) if self.engine_info is not None else []

    @property
    def provider_options(self) -> dict[str, Any]:
        """The encoder session's provider options (the GPU's device_id, use_tf32...)."""
        if "encoder" in self.sessions:
            return self.sessions["encoder"].get_provider_options()
        return dict(self.engine_info["provider_options"]) if self.engine_info is not None else {}

    def run(
        self, graph: str, signal: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """One ORT run of `graph` on a batch `signal` (B, ...); the `outputs` named (all when None) by
        name, each (B, ...). Only those are copied back from the device."""
        session = self.sessions[graph]
        names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
        fetched = session.run(names, {self.manifest.input.name: signal})
        return dict(zip(names, fetched, strict=True))

    def dummy_batch(self, batch: int = 1) -> np.ndarray:
        """Zeros of the graphs' input shape (warm-up)."""
        shape = [batch] + [int(d) for d in self.manifest.input.shape[1:]]
        return np.zeros(shape, dtype=NUMPY_DTYPES[self.manifest.input.dtype])


def load_model(
    directory: Path,
    chooser: ProviderChooser,
    threads: CpuThreads = CpuThreads(),
    graphs: Collection[str] | None = None,
    check_hashes: bool = True,
) -> LoadedModel:
    """Read and hash-check the manifest (the hashes: unless another process checks them), open its
    graphs (those named in `graphs`, None: all), check their input against the manifest."""
    try:
        manifest = read_manifest(directory, check_hashes=check_hashes)
    except ManifestError as e:
        raise ModelLoadError(str(e)) from e
    if manifest.input.dtype not in NUMPY_DTYPES or any(
        not isinstance(d, int) for d in manifest.input.shape[1:]
    ):
        raise ModelLoadError(f"{directory}: unsupported input {manifest.input.dtype} {manifest.input.shape}")
    sessions = {}
    for graph, spec in manifest.files.items():
        if graphs is not None and graph not in graphs:
            continue
        try:
            sessions[graph] = chooser.session(
                directory / spec.path, session_options(threads), manifest.input, spec.sha256[:16]
            )
        except ModelLoadError as e:  # a provider that did not start
            raise ModelLoadError(f"{directory}: {spec.path}: {e}") from e
        except Exception as e:  # ORT raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{directory}: ONNX Runtime cannot load {spec.path!r}: {e}") from e
        inputs = [i.name for i in sessions[graph].get_inputs()]
        if inputs != [manifest.input.name]:
            raise ModelLoadError(
                f"{directory}: {spec.path} takes {inputs}, the manifest says {manifest.input.name!r}"
            )
    if (
        "encoder" in sessions
        and manifest.has_classifier
        and "logits" not in [o.name for o in sessions["encoder"].get_outputs()]
    ):
        raise ModelLoadError(f"{directory}: the manifest has labels but encoder.onnx has no 'logits' output")
    return LoadedModel(directory=directory, manifest=manifest, sessions=sessions)


def load_models(
    paths: list[Path],
    chooser: ProviderChooser,
    threads: CpuThreads = CpuThreads(),
    precision: Sequence[str] = ("fp32",),
    graphs: Collection[str] | None = None,
    check_hashes: bool = True,
) -> dict[str, LoadedModel]:
    """Every model under `paths`, by manifest name: one directory per name, the variant `precision`
    prefers where there are several (`choose_variants`); of each, the `graphs` named (None: all)."""
    models: dict[str, LoadedModel] = {}
    for directory in choose_variants(find_model_dirs(paths), precision):
        model = load_model(directory, chooser, threads, graphs, check_hashes)
        models[model.name] = model
        log.info(
            "loaded %s (%s, %s) from %s on %s",
            model.name,
            model.manifest.modality,
            model.manifest.precision,
            directory,
            model.providers[0] if model.providers else "the engine process",
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
