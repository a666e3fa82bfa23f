"""Model directories -> loaded models: discovery, precision variants, the manifest, one session per graph.

A model directory holds `manifest.json` and the graphs it names (`encoder.onnx`, `tokenizer.onnx`);
`load_model` hash-checks the manifest's files and opens one ONNX Runtime session per graph, which every
concurrent run on this device shares (ONNX Runtime's `run()` is thread-safe and releases the GIL).
A folder of model directories may also hold versioned models, `NAME/VERSION/manifest.json`
(bridle/runtime/versions.py): each version loads as a model of its own, keyed `NAME@VERSION`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bridle.model.manifest import MANIFEST_FILE, Manifest, ManifestError, read_manifest
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.sessions import CpuThreads, ProviderChooser, session_options
from bridle.runtime.versions import VERSION_SEPARATOR, fingerprint, model_key
from bridle.runtime.wire import ModelInfo

log = logging.getLogger("bridle.runtime")
# the bundled demo models: `models/` beside the packages in the repository
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"
NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}
_INSTANCES = itertools.count(1)  # each load of a directory in this process: its own instance id


def find_model_dirs(paths: list[Path]) -> list[Path]:
    """Each path is a model directory (holds manifest.json) or a folder of model directories (and of
    versioned models: `NAME/VERSION/manifest.json`)."""
    return [directory for directory, _ in find_models(paths)]


def find_models(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """(directory, version) of every model directory under `paths`: version None for a flat model
    directory, the folder's name for `NAME/VERSION/`."""
    found: list[tuple[Path, str | None]] = []
    for p in paths:
        if not p.is_dir():
            raise ModelLoadError(f"model directory {str(p)!r} does not exist or is not a directory")
        if (p / MANIFEST_FILE).exists():
            found.append((p, None))
            continue
        before = len(found)
        for child in sorted(c for c in p.iterdir() if c.is_dir()):
            if (child / MANIFEST_FILE).exists():
                found.append((child, None))
                continue
            # a hidden folder is a version being written (copied, then renamed into place): not yet
            versions = (v for v in child.iterdir() if not v.name.startswith(".") and v.is_dir())
            for version in sorted(v for v in versions if (v / MANIFEST_FILE).exists()):
                if VERSION_SEPARATOR in version.name:
                    raise ModelLoadError(f"{version}: a version's name may not hold {VERSION_SEPARATOR!r}")
                found.append((version, version.name))
        if len(found) == before:
            raise ModelLoadError(f"{str(p)!r} holds no model directory (no {MANIFEST_FILE} in it or below)")
    return found


@dataclass
class LoadedModel:
    """One model directory: its manifest and its two sessions."""

    directory: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]  # "encoder", "tokenizer" (those this process opened)
    # in a front-end process, whose graphs run in the engine process: the engine's providers and the
    # encoder session's provider options, as the engine said (bridle/runtime/client.py)
    engine_info: ModelInfo | None = None
    version: str | None = None  # NAME/VERSION/: the folder's name; None for a flat model directory
    # this load's id, unique in the process (an engine's, in a front end): the batchers and the engine
    # link name a load by it, so an old and a new load of one key can serve side by side during a reload
    instance: str = ""
    fingerprint: str = ""  # bridle/runtime/versions.py: tells a reload whether the directory changed

    def __post_init__(self) -> None:
        if not self.instance:
            self.instance = f"{self.key}#{next(_INSTANCES)}"

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def key(self) -> str:
        """What requests name it by: NAME, or NAME@VERSION for a version."""
        return model_key(self.manifest.name, self.version)

    @property
    def providers(self) -> list[str]:
        if "encoder" in self.sessions:
            return self.sessions["encoder"].get_providers()
        return list(self.engine_info.providers) if self.engine_info is not None else []

    @property
    def provider_options(self) -> dict[str, Any]:
        """The encoder session's provider options (the GPU's device_id, use_tf32...)."""
        if "encoder" in self.sessions:
            return self.sessions["encoder"].get_provider_options()
        return dict(self.engine_info.provider_options) if self.engine_info is not None else {}

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
    version: str | None = None,
) -> LoadedModel:
    """Read and hash-check the manifest (the hashes: unless another process checks them), open its
    graphs (those named in `graphs`, None: all), check their input against the manifest. A `version`
    (NAME/VERSION/) must have the manifest name NAME."""
    try:
        marks = fingerprint(directory)
        manifest = read_manifest(directory, check_hashes=check_hashes)
    except (ManifestError, OSError) as e:
        raise ModelLoadError(str(e)) from e
    if version is not None and manifest.name != directory.parent.name:
        raise ModelLoadError(
            f"{directory}: a version of {directory.parent.name!r} has the manifest name {manifest.name!r}"
        )
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
    return LoadedModel(
        directory=directory, manifest=manifest, sessions=sessions, version=version, fingerprint=marks
    )


def load_models(
    paths: list[Path],
    chooser: ProviderChooser,
    threads: CpuThreads = CpuThreads(),
    precision: Sequence[str] = ("fp32",),
    graphs: Collection[str] | None = None,
    check_hashes: bool = True,
) -> dict[str, LoadedModel]:
    """Every model under `paths`, by key (the manifest name, NAME@VERSION for a version): one directory
    per key, the variant `precision` prefers where there are several (`choose_variants`); of each, the
    `graphs` named (None: all)."""
    models: dict[str, LoadedModel] = {}
    for directory, version in model_directories(paths, precision):
        model = load_model(directory, chooser, threads, graphs, check_hashes, version)
        models[model.key] = model
        log.info(
            "loaded %s (%s, %s) from %s on %s",
            model.key,
            model.manifest.modality,
            model.manifest.precision,
            directory,
            model.providers[0] if model.providers else "the engine process",
        )
    return models


def model_directories(paths: list[Path], precision: Sequence[str]) -> list[tuple[Path, str | None]]:
    """(directory, version) of each model to serve under `paths`: `find_models`, one variant per key."""
    found = find_models(paths)
    versions = dict(found)
    return [(d, versions[d]) for d in choose_variants([d for d, _ in found], precision, versions)]


def choose_variants(
    directories: list[Path], precision: Sequence[str], versions: dict[Path, str | None] | None = None
) -> list[Path]:
    """One directory per model key (the name, or NAME@VERSION with the directories' `versions`). A model
    with one directory is loaded whatever its precision; of a model's several variants (fp32, int8, fp16
    siblings), the first precision in `precision` that exists. Two directories of one key and one
    precision, or variants none of which is preferred, are errors."""
    variants: dict[str, dict[str, Path]] = {}
    for directory in directories:
        try:
            manifest = read_manifest(directory, check_hashes=False)  # load_model checks the hashes
        except ManifestError as e:
            raise ModelLoadError(str(e)) from e
        key = model_key(manifest.name, (versions or {}).get(directory))
        same = variants.setdefault(key, {})
        if manifest.precision in same:
            raise ModelLoadError(
                f"two model directories are named {key!r}, both {manifest.precision}: "
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
