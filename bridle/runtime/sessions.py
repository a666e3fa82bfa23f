"""ONNX Runtime sessions on the execution provider that really works, and their CPU threads.

`onnxruntime-gpu` lists CUDA even on a machine without a GPU, and a session asked for CUDA that cannot
start it logs the failure and runs on the CPU without raising. So every session is checked after it is
made: `session.get_providers()` must hold the GPU providers asked for (`ProviderChooser`). The provider
options (device, cuDNN search, TF32, memory, TensorRT caches and profiles) are built in
`bridle/runtime/providers.py`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from bridle.model.manifest import InputSpec
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.providers import (
    GpuOptions,
    TensorrtOptions,
    cuda_options,
    engine_dir,
    missing_tensorrt_libraries,
    native_stderr,
    preload_cuda,
    tensorrt_options,
)

log = logging.getLogger("bridle.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = {CUDA, TENSORRT}
ORT_WARNING_SEVERITY = 2  # while a session is made: its provider failures, nodes placed off the GPU
ORT_ERROR_SEVERITY = 3  # then errors only


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


@dataclass(frozen=True)
class CpuThreads:
    """How one session's runs use the CPU: cores, and the memory of their intermediate tensors."""

    intra_op: int = 0  # threads per run; 0: ORT's default, one per core
    spin: bool = False  # idle threads busy-wait for work: faster alone, slower beside the event loop
    # ORT's CPU memory arena keeps the largest activations any run needed (per concurrent run) for the
    # life of the session; off, each run's tensors are freed after it (bench/engine_memory.py). On here
    # (a batch job runs one batch size); the service turns it off unless BRIDLE_CPU_MEM_ARENA is set
    arena: bool = True


def session_options(threads: CpuThreads) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = ORT_ERROR_SEVERITY
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads.spin else "0")
    if threads.intra_op:
        options.intra_op_num_threads = threads.intra_op
    options.enable_cpu_mem_arena = threads.arena
    return options
