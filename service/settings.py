"""Service settings from environment variables (prefix `BRIDLE_`), read once at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridle_model.manifest import PRECISIONS
from service.runtime import CpuThreads

# the bundled demo models: `models/` beside the packages in the repository
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Every knob of the service; `BRIDLE_<NAME>` sets `<name>` (lists: comma- or os.pathsep-separated)."""

    model_config = SettingsConfigDict(env_prefix="BRIDLE_", extra="ignore")

    # models: each entry is a model directory, or a folder whose sub-directories are model directories
    model_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODELS_ROOT])
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    access_log: bool = False  # a log line per request (/metrics counts requests either way)
    opentelemetry: bool = False  # FastAPI's OpenTelemetry spans and metrics (with a configured provider)

    # dynamic batching, per model and graph
    max_batch_size: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0.0)
    queue_size: int = Field(256, ge=1)  # requests waiting for a batch; beyond it: 503 + Retry-After
    request_timeout_s: float = Field(30.0, gt=0.0)  # waiting for and running the batch; then 503 "timeout"
    retry_after_s: int = Field(1, ge=0)
    concurrent_runs: int = Field(2, ge=1)  # batches of one graph running at once

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

    # ONNX Runtime
    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: probe CUDA, else CPU
    # of a model with several variants (fp32 / int8 / fp16 siblings), the first of these that exists
    precision: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["fp32"])
    use_tensorrt: bool = False
    intra_op_threads: int = Field(0, ge=0)  # per run; 0: the cores / concurrent_runs
    spin_threads: bool = False  # ORT's idle threads busy-wait: faster alone, slower beside the event loop

    api_key: str | None = None  # when set: `X-API-Key: <key>` or `Authorization: Bearer <key>`

    @field_validator("model_dirs", "providers", "precision", mode="before")
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

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def cpu_threads(self) -> CpuThreads:
        """ORT's threads per run: as set, or the cores shared among the concurrent runs."""
        threads = self.intra_op_threads or max(1, usable_cores() // self.concurrent_runs)
        return CpuThreads(intra_op=threads, spin=self.spin_threads)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
