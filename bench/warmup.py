"""What two GPU-path choices cost on the CPU: `python -m bench.warmup [--rounds 2] [--batch 16]`.

1. warm-up before ready: every batch size (`BRIDLE_WARMUP=all`, the GPU's default) against full batches
   only (`full`, the CPU's default), in process over the bundled models, as the service does it;
2. fetched outputs: one encoder run at `--batch` fetching every output against the embedding alone (what
   /embed fetches), per bundled model, one ORT thread.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Annotated

import typer

from bridle.runtime.models import find_model_dirs, load_model, load_models
from bridle.runtime.sessions import CPU, CpuThreads, ProviderChooser
from bridle.service.infer import Inference
from bridle.service.metrics import Metrics
from bridle.service.settings import Settings


def warm_up_seconds(warmup: str) -> float:
    settings = Settings(providers=[CPU], warmup=warmup)
    models = load_models(settings.model_dirs, settings.provider_chooser(0), settings.cpu_threads)

    async def go() -> float:
        inference = Inference(settings, models, Metrics.create())
        await inference.start()
        started = time.perf_counter()
        await inference.warm_up()
        elapsed = time.perf_counter() - started
        await inference.stop()
        return elapsed

    return asyncio.run(go())


def run_ms(model, signal, outputs: list[str] | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.run("encoder", signal, outputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(
    rounds: Annotated[int, typer.Option(help="rounds of each warm-up")] = 2,
    batch: Annotated[int, typer.Option(help="batch size of the fetched-outputs runs")] = 16,
    repeats: Annotated[int, typer.Option(help="runs per fetched-outputs figure")] = 25,
) -> None:
    for _ in range(rounds):
        for warmup in ("full", "all"):
            print(f"warm-up {warmup:>4}: {warm_up_seconds(warmup):6.2f} s (bundled models, CPU defaults)")
    for directory in find_model_dirs(Settings().model_dirs):
        model = load_model(directory, ProviderChooser([CPU]), CpuThreads(intra_op=1))
        signal = model.dummy_batch(batch)
        model.run("encoder", signal)
        every, embedding = run_ms(model, signal, None, repeats), run_ms(model, signal, ["embedding"], repeats)
        name = directory.name
        print(f"{name}: batch {batch}, every output {every:.1f} ms, embedding alone {embedding:.1f} ms")


if __name__ == "__main__":
    typer.run(main)
