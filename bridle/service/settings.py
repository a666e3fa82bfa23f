"""Service settings from environment variables (prefix `BRIDLE_`), read once at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridle.model.manifest import PRECISIONS
from bridle.model.windowing import ONE_WINDOW_TOLERANCE, WindowPolicy
from bridle.runtime.devices import nvidia_gpu_present
from bridle.runtime.models import DEFAULT_MODELS_ROOT
from bridle.runtime.providers import ArenaStrategy, CudnnSearch, GpuOptions, TensorrtOptions
from bridle.runtime.sessions import CpuThreads, ProviderChooser

# on a GPU, unless set: one run at a time per graph, larger batches (~150 kernels per run: small batches
# leave the GPU waiting on the launches and the event loop)
GPU_DEFAULTS = {"max_batch_size": 64, "concurrent_runs": 1}


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/bridle`, else `~/.cache/bridle` (the GPU image sets /var/cache/bridle)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bridle"


class Settings(BaseSettings):
    """Every knob of the service; `BRIDLE_<NAME>` sets `<name>` (lists: comma- or os.pathsep-separated)."""

    model_config = SettingsConfigDict(env_prefix="BRIDLE_", extra="ignore")

    # models: each entry is a model directory, or a folder whose sub-directories are model directories
    model_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODELS_ROOT])
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    # front-end processes (HTTP, decode, windowing, admission) over one engine process that runs the graphs
    # (bridle/service/supervisor.py); 0: one process, whose event loop is the front end and whose batcher
    # threads are the engine. Unset: `default_frontends` (docs/architecture.md has the measurements)
    frontends: int | None = Field(None, ge=0)
    # the front ends' niceness over the engine's (os.nice): under CPU contention the engine's batches, the
    # work the service is for, run first; parsing, decoding and refusing wait. 0: equal shares
    frontend_nice: int = Field(10, ge=0, le=19)
    # with front ends: a second engine process kept loaded and warm, which takes over the moment the
    # engine dies (a restart from scratch is an outage of seconds: spawn, imports, loading, warm-up), then
    # a new spare starts. It holds a second copy of the models, so unset it is on without an NVIDIA GPU
    # (the models' memory is the host's) and off with one (a second copy in GPU memory)
    engine_spare: bool | None = None
    _frontends_defaulted: bool = PrivateAttr(False)  # unset: chosen by `default_frontends`
    access_log: bool = False  # a log line per request (/metrics counts requests either way)
    opentelemetry: bool = False  # FastAPI's OpenTelemetry spans and metrics (with a configured provider)

    # dynamic batching, per model and graph; the defaults are the CPU's (GPU_DEFAULTS on a GPU)
    max_batch_size: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0.0)
    queue_size: int = Field(256, ge=1)  # requests waiting for a batch; beyond it: 503 + Retry-After
    request_timeout_s: float = Field(30.0, gt=0.0)  # waiting for and running the batch; then 503 "timeout"
    retry_after_s: int = Field(1, ge=0)
    concurrent_runs: int = Field(2, ge=1)  # batches of one graph running at once
    # warm-up before ready: "all" runs every batch size 1..max_batch_size on every runner thread, "full"
    # only full batches, "one" a batch of one (kernels and threads started; the memory arena grows with
    # the load); "auto": all on a GPU (each new shape costs a cuDNN search there), one on a CPU (no
    # per-shape search: a ViT-B model was ready in 14 s with one, > 2 min with full batches of 16)
    warmup: Literal["auto", "all", "full", "one"] = "auto"

    decode_threads: int = Field(0, ge=0)  # threads decoding uploads; 0: one per core

    # admission: inference requests in flight (body read, decode, queue, run); beyond it 503 at once
    max_concurrent_requests: int = Field(64, ge=1)
    drain_timeout_s: float = Field(30.0, ge=0.0)  # on SIGTERM: how long in-flight requests may finish

    # input limits
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)  # the whole request body
    max_audio_seconds: float = Field(600.0, gt=0.0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_video_seconds: float = Field(120.0, gt=0.0)
    max_windows: int = Field(512, ge=1)  # model input windows per request, all uploads together

    # windowing (bridle/model/windowing.py WindowPolicy): a clip at most `window_tolerance` (a fraction
    # of the window) longer than one window is one window; longer ones are windows `window_hop` (a
    # fraction of the window) apart, the last ending at the clip's end
    window_tolerance: float = Field(ONE_WINDOW_TOLERANCE, ge=0.0, lt=1.0)
    window_hop: float = Field(1.0, gt=0.0, le=1.0)

    # ONNX Runtime
    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: probe CUDA, else CPU
    # of a model with several variants (fp32 / int8 / fp16 siblings), the first of these that exists
    precision: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["fp32"])
    use_tensorrt: bool = False
    intra_op_threads: int = Field(0, ge=0)  # per run; 0: the cores / concurrent_runs
    spin_threads: bool = False  # ORT's idle threads busy-wait: faster alone, slower beside the event loop
    # ORT's CPU arena keeps each concurrent run's activations between runs: 1.57x the RSS of one run on
    # a ViT-B model at batch 16 against 0.47x without, for 3 % more windows/s (docs/configuration.md)
    cpu_mem_arena: bool = False

    # GPU: CUDA provider options, TensorRT caches; docs/configuration.md "GPU"
    require_gpu: bool = False  # refuse to start when the models would run on the CPU
    # the GPU of each worker process: one id, or a list spread over the workers (worker i: list[i % n])
    device_id: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [0])
    cudnn_conv_algo_search: CudnnSearch = "HEURISTIC"
    use_tf32: bool = False  # off: CUDA outputs keep the 1e-4 parity with the CPU
    gpu_mem_limit_mb: int = Field(0, ge=0)  # per session; 0: no bound
    arena_extend_strategy: ArenaStrategy = "kNextPowerOfTwo"
    # TensorRT's engine and timing caches: a writable folder (models are mounted read-only)
    trt_cache_dir: Path = Field(default_factory=lambda: default_cache_dir() / "tensorrt")
    trt_fp16: bool = False

    api_key: str | None = None  # when set: `X-API-Key: <key>` or `Authorization: Bearer <key>`

    @field_validator("model_dirs", "providers", "precision", "device_id", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            parts = value.replace(os.pathsep, ",").split(",")
            return [p.strip() for p in parts if p.strip()]
        return value

    @field_validator("precision")
    @classmethod
    def _known_precisions(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in PRECISIONS]
        if unknown or not value:
            raise ValueError(f"precision must list some of {list(PRECISIONS)}, got {value}")
        return value

    @field_validator("device_id")
    @classmethod
    def _device_ids(cls, value: list[int]) -> list[int]:
        if not value or any(d < 0 for d in value):
            raise ValueError(f"device_id must list GPU ordinals >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _one_process_layout(self) -> Settings:
        if self.frontends and self.workers > 1:
            raise ValueError("set BRIDLE_FRONTENDS (front ends over one engine) or BRIDLE_WORKERS, not both")
        if self.frontends is None or self.engine_spare is None:
            gpu = (not self.providers or any(p != "CPUExecutionProvider" for p in self.providers)) and (
                nvidia_gpu_present()
            )
            if self.frontends is None:
                self._frontends_defaulted = True
                self.frontends = 0 if self.workers > 1 else default_frontends(usable_cores(), gpu)
            if self.engine_spare is None:
                self.engine_spare = not gpu
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def window_policy(self) -> WindowPolicy:
        return WindowPolicy(tolerance=self.window_tolerance, hop=self.window_hop)

    @property
    def cpu_threads(self) -> CpuThreads:
        """ORT's threads per run: as set, or the cores shared among the concurrent runs."""
        threads = self.intra_op_threads or max(1, usable_cores() // self.concurrent_runs)
        return CpuThreads(intra_op=threads, spin=self.spin_threads, arena=self.cpu_mem_arena)

    def for_device(self, on_gpu: bool) -> Settings:
        """These settings with the device's defaults for what was not set (`GPU_DEFAULTS` on a GPU)."""
        if not on_gpu:
            return self
        return self.model_copy(
            update={k: v for k, v in GPU_DEFAULTS.items() if k not in self.model_fields_set}
        )

    def warmup_sizes(self, on_gpu: bool) -> list[int]:
        """The batch sizes the warm-up runs on every runner thread, largest first (the memory arena
        grows once, to its final size)."""
        if self.warmup == "one" or (self.warmup == "auto" and not on_gpu):
            return [1]
        if self.warmup == "full":
            return [self.max_batch_size]
        return list(range(self.max_batch_size, 0, -1))  # all, or auto on a GPU

    def gpu_options(self, device_id: int) -> GpuOptions:
        return GpuOptions(
            device_id=device_id,
            cudnn_conv_algo_search=self.cudnn_conv_algo_search,
            use_tf32=self.use_tf32,
            gpu_mem_limit_mb=self.gpu_mem_limit_mb,
            arena_extend_strategy=self.arena_extend_strategy,
        )

    def tensorrt_options(self) -> TensorrtOptions:
        """TensorRT runs on a GPU: its profile spans the GPU's batch sizes (1 .. max_batch_size)."""
        batch = self.for_device(on_gpu=True).max_batch_size
        return TensorrtOptions(self.trt_cache_dir, max_batch=batch, opt_batch=batch, fp16=self.trt_fp16)

    def provider_chooser(self, device_id: int) -> ProviderChooser:
        """The provider choice of this process's sessions, on GPU `device_id`."""
        return ProviderChooser(
            override=self.providers,
            use_tensorrt=self.use_tensorrt,
            require_gpu=self.require_gpu,
            gpu=self.gpu_options(device_id),
            tensorrt=self.tensorrt_options(),
        )


def frontends_defaulted(settings: Settings) -> bool:
    """Whether BRIDLE_FRONTENDS was left unset (its value is `default_frontends`'s)."""
    return settings._frontends_defaulted


def default_frontends(cores: int, gpu: bool) -> int:
    """Front-end processes when BRIDLE_FRONTENDS is unset. One core: none (one process). A CPU: 2, measured
    on 2 cores (`python -m bench.engine_load --layouts-only`): level with one process at 16 clients and on
    the real-size model, 2.25x its served req/s at 400 clients (the engine's batching no longer shares an
    event loop with the refusals). A GPU: half the cores, not measured yet (the GPU check script does)."""
    if cores < 2:
        return 0
    return max(2, cores // 2) if gpu else 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
