"""Execution-provider options for ONNX Runtime's CUDA and TensorRT providers, and their native side.

- `cuda_options(GpuOptions)` and `tensorrt_options(GpuOptions, TensorrtOptions, input, key)`: the
  provider option dictionaries ONNX Runtime takes (every value a string), plain data in and out, so the
  CPU tests check them;
- `native_stderr()`: ONNX Runtime's C++ logger writes to file descriptor 2, not to Python logging; while a
  session is created the descriptor points at a temporary file, and the lines it caught are handed back
  (`OrtLine`), so the service re-logs them (at WARNING when a provider did not start);
- `preload_cuda()` and `missing_tensorrt_libraries()`: the CUDA / cuDNN wheels (`bridle[cuda]`) and the
  TensorRT wheel (`bridle[tensorrt]`) install their libraries inside site-packages, where the dynamic
  loader does not look; they are loaded by path first, and what cannot be loaded is named.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridle.model.manifest import InputSpec

log = logging.getLogger("bridle.service")

CudnnSearch = Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"]
ArenaStrategy = Literal["kNextPowerOfTwo", "kSameAsRequested"]
# the libraries ONNX Runtime's TensorRT provider is linked against (TensorRT 10)
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


@dataclass(frozen=True)
class GpuOptions:
    """How sessions use one GPU (CUDA provider options, shared by the TensorRT provider's device)."""

    device_id: int = 0
    # cuDNN convolution algorithm choice per new input shape: HEURISTIC asks cuDNN's heuristics (fast),
    # EXHAUSTIVE times every algorithm (ONNX Runtime's default: slow first call per shape), DEFAULT takes
    # the first one
    cudnn_conv_algo_search: CudnnSearch = "HEURISTIC"
    # TF32 matmuls/convolutions on Ampere+: ~10 bits of mantissa, off so CUDA keeps the 1e-4 parity with
    # the CPU (the fbank's DFT matmuls and the tokenizer's distance matmul are cancellation-sensitive)
    use_tf32: bool = False
    gpu_mem_limit_mb: int = 0  # the memory arena's bound per session; 0: no bound
    arena_extend_strategy: ArenaStrategy = "kNextPowerOfTwo"


@dataclass(frozen=True)
class TensorrtOptions:
    """The TensorRT provider: engines and timings cached on a writable path, one profile per graph."""

    cache_dir: Path  # engine and timing caches (not the model folder: models are mounted read-only)
    max_batch: int  # the profile's largest batch; the smallest is 1
    opt_batch: int  # the batch TensorRT tunes its kernels for
    fp16: bool = False  # fp16 kernels: faster, no fp32 parity


def cuda_options(gpu: GpuOptions) -> dict[str, str]:
    """The CUDA provider's options (ONNX Runtime's names; every value a string)."""
    options = {
        "device_id": str(gpu.device_id),
        "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search,
        "use_tf32": "1" if gpu.use_tf32 else "0",
        "arena_extend_strategy": gpu.arena_extend_strategy,
    }
    if gpu.gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(gpu.gpu_mem_limit_mb * 1024 * 1024)
    return options


def profile_shapes(signal: InputSpec, batch: int) -> str:
    """TensorRT's shape string for the graphs' one input at `batch`: "signal:8x20720"."""
    dims = [batch, *(int(d) for d in signal.shape[1:])]
    return f"{signal.name}:{'x'.join(str(d) for d in dims)}"


def engine_dir(trt: TensorrtOptions, key: str) -> Path:
    """Where the engines of one graph are cached: a folder per graph (`key`: its file's sha256), so two
    models never share an engine; the timing cache, per GPU architecture, is shared by all."""
    return trt.cache_dir / "engines" / key


def tensorrt_options(gpu: GpuOptions, trt: TensorrtOptions, signal: InputSpec, key: str) -> dict[str, str]:
    """The TensorRT provider's options: the device, the caches, and one optimisation profile over the
    dynamic batch (1 .. max_batch, tuned for opt_batch) built from the manifest's input shape."""
    return {
        "device_id": str(gpu.device_id),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(engine_dir(trt, key)),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(trt.cache_dir),
        "trt_fp16_enable": "1" if trt.fp16 else "0",
        "trt_profile_min_shapes": profile_shapes(signal, 1),
        "trt_profile_opt_shapes": profile_shapes(signal, trt.opt_batch),
        "trt_profile_max_shapes": profile_shapes(signal, trt.max_batch),
    }


# ---- ONNX Runtime's own log lines ----------------------------------------------------------------

_ORT_LINE = re.compile(r"\[([VIWEF]):onnxruntime:[^\]]*\]\s*(.*)")
_ORT_ERROR_PREFIX = re.compile(r"^.*\[ONNXRuntimeError\] : \d+ : \w+ : ")  # source file, function, code
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CAPTURING = threading.Lock()  # file descriptor 2 is one per process


@dataclass(frozen=True)
class OrtLine:
    severity: str  # "V", "I", "W", "E" or "F", ONNX Runtime's letters
    message: str


@dataclass
class CapturedStderr:
    """What reached file descriptor 2 while captured: ONNX Runtime's lines, and anything else."""

    ort: list[OrtLine]
    other: list[str]

    def errors(self) -> list[str]:
        """ONNX Runtime's warning and error messages, the reason a provider did not start."""
        return [line.message for line in self.ort if line.severity in "WEF"]


@contextlib.contextmanager
def native_stderr() -> Iterator[CapturedStderr]:
    """Point file descriptor 2 at a temporary file while the block runs; afterwards the yielded object
    holds ONNX Runtime's lines (parsed) and every other line, which is written back to stderr at once
    (another thread's log line must not be lost)."""
    captured = CapturedStderr([], [])
    with _CAPTURING, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 at all (a detached process): nothing to catch
            yield captured
            return
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in _ANSI.sub("", tmp.read().decode(errors="replace")).splitlines():
                if match := _ORT_LINE.search(line):
                    message = _ORT_ERROR_PREFIX.sub("", match.group(2)).strip()
                    captured.ort.append(OrtLine(match.group(1), message))
                elif line.strip():
                    captured.other.append(line)
            if captured.other:
                sys.stderr.write("\n".join(captured.other) + "\n")


# ---- native libraries ----------------------------------------------------------------------------


_preloaded: list[str] | None = None


def preload_cuda() -> list[str]:
    """Load the CUDA and cuDNN libraries once per process, from the `nvidia-*` wheels when installed
    (`bridle[cuda]`), else from the loader's path (the GPU image's base); returns ONNX Runtime's
    messages about the ones that failed (empty when all loaded)."""
    global _preloaded
    if _preloaded is None:
        import onnxruntime as ort

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            ort.preload_dlls(cuda=True, cudnn=True)
        _preloaded = [line for line in printed.getvalue().splitlines() if line.startswith("Failed to load")]
    return _preloaded


@functools.cache
def missing_tensorrt_libraries() -> dict[str, str]:
    """The TensorRT libraries that cannot be loaded, with the loader's reason (once per process); the
    `tensorrt_libs` wheel (`bridle[tensorrt]`) is looked in first, and what loads stays loaded, so ONNX
    Runtime's TensorRT provider finds it."""
    spec = importlib.util.find_spec("tensorrt_libs")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    missing: dict[str, str] = {}
    for name in TENSORRT_LIBRARIES:
        candidates = [str(f / name) for f in folders if (f / name).exists()] + [name]
        for candidate in candidates:
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                missing.pop(name, None)
                break
            except OSError as e:
                missing[name] = str(e)
    return missing
