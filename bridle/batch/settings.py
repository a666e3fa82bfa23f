"""The settings of one batch job (the CLI fills them from its flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridle.model.config import Precision
from bridle.model.manifest import PRECISIONS
from bridle.model.windowing import AGGREGATES, DEFAULT_POLICY, Aggregate, WindowPolicy
from bridle.runtime.windows import Limits

Device = Literal["auto", "cpu", "gpu"]


class SettingsError(ValueError):
    """Settings that cannot make a job (bad numbers, a GPU the cluster does not have)."""


# media over these goes to the errors table (too_long / too_large); offline, longer files than the
# service takes are fine
DEFAULT_LIMITS = Limits(max_audio_seconds=3600.0, max_image_pixels=40_000_000, max_video_seconds=600.0)


@dataclass(frozen=True)
class JobSettings:
    input: str  # a folder, or a .csv / .jsonl / .parquet manifest with a `path` column; local or fsspec URL
    model_dirs: tuple[str, ...]  # model directories or folders of them, readable by the driver
    output: str  # the output dataset folder, local or fsspec URL
    address: str | None = None  # an existing Ray cluster ("auto", "host:6379", "ray://..."); None: local
    actors: int = 0  # ONNX Runtime actors; 0: one per CPU (per GPU with device gpu)
    batch_size: int = 8  # windows per ONNX Runtime run (on a CPU, 4-8 do the most per CPU-second)
    shard_files: int = 64  # files per shard: the unit of work, output and resume
    device: Device = "auto"  # auto: GPU actors with the CUDA provider when the cluster has GPUs
    threads: int = 0  # ONNX Runtime threads per actor; 0: the actor's share of the CPUs
    top_k: int = 5  # labels per window when the model has a classifier
    windowing: WindowPolicy = DEFAULT_POLICY  # how long media is cut into windows, as the service does
    aggregate: Aggregate | None = (
        None  # clip scores from window scores: mean, max (multi-label); None: default
    )
    limits: Limits = DEFAULT_LIMITS
    precision: tuple[Precision, ...] = (
        "fp32",
    )  # of a model's variants (fp32 / int8 / fp16), the first found
    num_cpus: int | None = None  # CPUs of the local Ray (tests); None: all of them

    def __post_init__(self) -> None:
        checks = {
            "actors": self.actors >= 0,
            "batch_size": self.batch_size >= 1,
            "shard_files": self.shard_files >= 1,
            "threads": self.threads >= 0,
            "top_k": self.top_k >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SettingsError(f"invalid settings: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise SettingsError(f"aggregate must be one of {list(AGGREGATES)}, not {self.aggregate!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise SettingsError(f"device must be auto, cpu or gpu, not {self.device!r}")
        unknown = [p for p in self.precision if p not in PRECISIONS]
        if unknown or not self.precision:
            raise SettingsError(f"precision must list some of {list(PRECISIONS)}, got {list(self.precision)}")
        if not self.model_dirs:
            raise SettingsError("at least one model directory is needed")
