"""ONNX Runtime sessions for the model directories, on the execution provider that really works.

`onnxruntime-gpu` lists CUDA even on a machine without a GPU, and a session asked for CUDA that cannot
start it logs the failure and runs on the CPU without raising. So every session is checked after it is
made: `session.get_providers()` must hold the GPU providers asked for (`ProviderChooser`). The provider
options (device, cuDNN search, TF32, memory, TensorRT caches and profiles) are built in
`service/providers.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bridle_model.manifest import MANIFEST_FILE, InputSpec, Manifest, ManifestError, read_manifest
from service.providers import (
    GpuOptions,
    TensorrtOptions,
    cuda_options,
    engine_dir,
    missing_tensorrt_libraries,
    native_stderr,
    preload_cuda,
    tensorrt_options,
)

log = logging.getLogger("bridle.service")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = {CUDA, TENSORRT}
ORT_WARNING_SEVERITY = 2  # while a session is made: its provider failures, nodes placed off the GPU
ORT_ERROR_SEVERITY = 3  # then errors only
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
    """Decides the providers of every session and checks that each session really runs them.

    `override` (BRIDLE_PROVIDERS) is taken as asked: a session that lacks one of its GPU providers is an
    error. Without it the first session probes CUDA (with TensorRT first when `use_tensorrt`); when CUDA
    does not start, ONNX Runtime's reason is logged at WARNING and every later session uses the CPU
    without asking again, unless `require_gpu`, which makes it an error. ONNX Runtime's own fallbacks
    (to the CPU when a session cannot be created, or when a run fails on the GPU) are disabled."""

    override: list[str] = field(default_factory=list)
    use_tensorrt: bool = False
    require_gpu: bool = False
    gpu: GpuOptions = field(default_factory=GpuOptions)
    tensorrt: TensorrtOptions | None = None  # the caches and profile; needed with TensorRT
    _cuda_works: bool | None = None
    _tensorrt_usable: bool | None = None

    def requested(self) -> list[str]:
        available = ort.get_available_providers()
        if self.override:
            unknown = [p for p in self.override if p not in available]
            if unknown:
                raise ModelLoadError(
                    f"BRIDLE_PROVIDERS names {unknown}, not available in this onnxruntime "
                    f"(available: {available})"
                )
            if self.require_gpu and not set(self.override) & GPU_PROVIDERS:
                raise ModelLoadError(
                    f"BRIDLE_REQUIRE_GPU is set, but BRIDLE_PROVIDERS {self.override} names no GPU provider"
                )
            return list(self.override)
        if self._cuda_works is False or CUDA not in available:
            if self.require_gpu:
                raise ModelLoadError(
                    f"BRIDLE_REQUIRE_GPU is set, but this onnxruntime has no CUDA provider ({available}): "
                    "install onnxruntime-gpu (bridle[gpu])"
                )
            return [CPU]
        wanted = [TENSORRT] if self.use_tensorrt and self._tensorrt_loads() else []
        return [*wanted, CUDA, CPU]

    def _tensorrt_loads(self) -> bool:
        """Whether TensorRT's libraries load (checked once); a clear warning when they do not."""
        if self._tensorrt_usable is None:
            missing = missing_tensorrt_libraries() if TENSORRT in ort.get_available_providers() else {}
            self._tensorrt_usable = TENSORRT in ort.get_available_providers() and not missing
            if not self._tensorrt_usable:
                why = "; ".join(missing.values()) or "this onnxruntime has no TensorRT provider"
                log.warning(
                    "BRIDLE_USE_TENSORRT is set, but TensorRT cannot load (%s): running on CUDA without it. "
                    "Install bridle[tensorrt] (TensorRT 10 libraries) or use the GPU image",
                    why,
                )
        return self._tensorrt_usable

    def provider_options(self, providers: list[str], signal: InputSpec | None, key: str) -> list[dict]:
        """ONNX Runtime's options for each provider; TensorRT's engines under `key` in the cache."""
        options: list[dict[str, str]] = []
        for provider in providers:
            if provider == CUDA:
                options.append(cuda_options(self.gpu))
            elif provider == TENSORRT:
                if self.tensorrt is None or signal is None:
                    raise ModelLoadError("TensorRT needs a cache folder and the model's input shape")
                options.append(tensorrt_options(self.gpu, self.tensorrt, signal, key))
            else:
                options.append({})
        return options

    def _prepare_cache(self, key: str) -> None:
        """The TensorRT cache folders exist and are writable (engines are built into them)."""
        if self.tensorrt is None:
            raise ModelLoadError("TensorRT needs a cache folder (BRIDLE_TRT_CACHE_DIR)")
        folder = engine_dir(self.tensorrt, key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelLoadError(f"the TensorRT cache folder cannot be made: {e}") from e
        if not os.access(folder, os.W_OK) or not os.access(self.tensorrt.cache_dir, os.W_OK):
            raise ModelLoadError(
                f"the TensorRT cache folder {str(self.tensorrt.cache_dir)!r} is not writable"
            )

    def session(
        self, path: Path, options: ort.SessionOptions, signal: InputSpec | None = None, key: str = ""
    ) -> ort.InferenceSession:
        """A session of the graph at `path` on the requested providers, checked; ONNX Runtime's log
        lines of its creation are re-logged (WARNING when a provider did not start, else INFO)."""
        providers = self.requested()
        gpu = bool(set(providers) & GPU_PROVIDERS)
        library_errors = list(preload_cuda()) if gpu else []  # CUDA's libraries first: TensorRT's need them
        if TENSORRT in providers:
            self._prepare_cache(key)
            library_errors += missing_tensorrt_libraries().values()  # loads them when installed
        if gpu:
            options.log_severity_level = ORT_WARNING_SEVERITY  # also: which nodes left the GPU
        ort.set_default_logger_severity(ORT_WARNING_SEVERITY)
        try:
            with native_stderr() as captured:
                session = ort.InferenceSession(
                    str(path),
                    sess_options=options,
                    providers=providers,
                    provider_options=self.provider_options(providers, signal, key),
                    enable_fallback=0,
                )
        finally:
            ort.set_default_logger_severity(ORT_ERROR_SEVERITY)
        session.disable_fallback()  # a failed run raises instead of moving the session to the CPU
        active = session.get_providers()
        missing = [p for p in providers if p != CPU and p not in active]
        if not missing:
            for line in captured.ort:  # e.g. which nodes ONNX Runtime keeps on the CPU
                log.info("onnxruntime: %s", line.message)
            if gpu and self._cuda_works is None:
                log.info("execution providers %s, %s", active, self.gpu)
            if CUDA in active:
                self._cuda_works = True
            return session
        reason = "; ".join(captured.errors() + library_errors) or "ONNX Runtime logged no reason"
        if self.override:
            raise ModelLoadError(
                f"BRIDLE_PROVIDERS asks for {missing}, but ONNX Runtime could not start "
                f"{'them' if len(missing) > 1 else 'it'} and would run on {active}: {reason}"
            )
        if CUDA in missing:
            self._cuda_works = False
            if self.require_gpu:
                raise ModelLoadError(
                    f"the CUDA execution provider did not start and BRIDLE_REQUIRE_GPU is set: {reason}"
                )
            log.warning("the CUDA execution provider did not start: serving on the CPU (%s)", reason)
        else:  # CUDA runs, TensorRT did not start
            self._tensorrt_usable = False
            log.warning("the TensorRT execution provider did not start: running on CUDA (%s)", reason)
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
