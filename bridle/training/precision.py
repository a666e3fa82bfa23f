"""Mixed precision, compilation and the fused optimiser: what `train.*` in a recipe switches on.

- `autocast(precision, device)`: bf16 autocast around the forward pass (E, D, T, TE in bf16, on CPU
  and GPU alike); "fp32" is a no-op. The residual quantizer switches autocast off around itself and
  runs in fp32 (`bridle.model.tokenizer.quantize_fp32`); losses are computed from upcast outputs.
  There is no fp16: it needs loss scaling (GradScaler) and bf16 needs none, on every GPU since Ampere
  and on CPUs with AVX-512 bf16 / AMX.
- `compile_transformers(module)`: `torch.compile` each transformer stack in place (nn.Module.compile,
  so state-dict keys and checkpoints stay the same). Only the stacks: the quantizer's data-dependent
  code (k-means, dead-code restarts, `.item()` reads) would break the graph at every step.
- `check_supported(train, device)`: a clear error where a setting cannot work, instead of a silent
  fallback.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import torch
from torch import nn

from bridle.model.errors import BridleError
from bridle.model.transformer import Transformer
from bridle.training.recipe import TrainSpec

FUSED_ADAMW_DEVICES = ("cuda", "cpu")


class PrecisionError(BridleError, RuntimeError):
    """A `train.*` setting cannot run on this machine."""


def check_supported(train: TrainSpec, device: torch.device) -> None:
    if train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError("train.precision=bf16 needs a GPU with bf16 (Ampere or newer)")
    if train.fused_optimizer and device.type not in FUSED_ADAMW_DEVICES:
        raise PrecisionError(
            f"train.fused_optimizer: no fused AdamW on {device.type} (only {FUSED_ADAMW_DEVICES})"
        )
    if train.compile and device.type == "cpu" and shutil.which("cc") is None and shutil.which("gcc") is None:
        raise PrecisionError("train.compile on CPU needs a C compiler (cc/gcc) for the generated kernels")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for `precision == "bf16"`, nothing for "fp32"."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def compile_transformers(module: nn.Module) -> int:
    """Compile every transformer stack in `module` in place; returns how many."""
    stacks = [m for m in module.modules() if isinstance(m, Transformer)]
    for stack in stacks:
        stack.compile()
    return len(stacks)
