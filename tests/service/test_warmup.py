"""Warm-up and fetched outputs, on real micro models: every batch size runs on the threads that will serve,
and each task fetches only the graph outputs it needs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from bridle.runtime.models import load_models
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from bridle.service.infer import Inference
from bridle.service.media import Upload
from bridle.service.metrics import Metrics
from bridle.service.settings import Settings


class RecordingSession:
    """Wraps an ONNX Runtime session: records (thread, batch size, output names) of every run; with
    `providers`, says it runs on those (a CPU session standing in for a GPU one)."""

    def __init__(self, session, runs: list[tuple[str, int, tuple[str, ...]]], providers=None) -> None:
        self.session, self.runs, self.providers = session, runs, providers

    def get_providers(self) -> list[str]:
        return self.providers or self.session.get_providers()

    def run(self, output_names, feed, run_options=None):
        batch = len(next(iter(feed.values())))
        self.runs.append((threading.current_thread().name, batch, tuple(output_names)))
        return self.session.run(output_names, feed, run_options)

    def __getattr__(self, name: str):
        return getattr(self.session, name)


MARK = ("--- warmed up ---", 0, ())


def recorded(model_dirs: list[Path], work, on_gpu: bool = False, **overrides) -> dict[tuple[str, str], list]:
    """Load the models with every session recorded, start an `Inference` (as on a GPU when `on_gpu`:
    the sessions say they run on CUDA), warm it up, await `work(inference)`; the runs of each (model,
    graph), warm-up first, then MARK."""
    settings = Settings(model_dirs=model_dirs, **overrides)
    models = load_models(model_dirs, ProviderChooser(["CPUExecutionProvider"]), CpuThreads(intra_op=1))
    runs: dict[tuple[str, str], list] = {}
    for name, model in models.items():
        for graph, session in list(model.sessions.items()):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else None
            model.sessions[graph] = RecordingSession(session, runs.setdefault((name, graph), []), providers)

    async def go():
        inference = Inference(settings, models, Metrics.create())
        await inference.start()
        try:
            await inference.warm_up()
            assert inference.ready
            for r in runs.values():
                r.append(MARK)
            await work(inference)
        finally:
            await inference.stop()

    asyncio.run(go())
    return runs


def _after_warm_up(runs: list) -> list:
    return runs[runs.index(MARK) + 1 :]


@pytest.mark.parametrize(("warmup", "on_gpu"), [("all", False), ("auto", True)])
def test_warm_up_runs_every_batch_size_on_every_runner_thread(model_root: Path, warmup, on_gpu) -> None:
    async def nothing(inference: Inference) -> None:
        pass

    settings = {"max_batch_size": 4, "concurrent_runs": 2, "warmup": warmup}
    runs = recorded([model_root / "audio", model_root / "image"], nothing, on_gpu, **settings)
    # features.onnx (the page's view of the input, POST /features) is run on demand, without a batcher
    assert all(r == [MARK] for (_, graph), r in runs.items() if graph == "features")  # none in warm-up
    runs = {key: r for key, r in runs.items() if key[1] != "features"}
    assert set(runs) == {(m, g) for m in ("micro-audio", "micro-image") for g in ("encoder", "tokenizer")}
    for (name, graph), graph_runs in runs.items():
        warm = graph_runs[: graph_runs.index(MARK)]
        threads = {t for t, _, _ in warm}
        assert threads == {f"ort-{name}/{graph}_0", f"ort-{name}/{graph}_1"}  # the batcher's own threads
        for thread in threads:  # each thread: every batch size, largest first
            assert [b for t, b, _ in warm if t == thread] == [4, 3, 2, 1]


def test_a_cpu_warm_up_runs_one_batch_of_one() -> None:
    assert Settings(max_batch_size=8).warmup_sizes(on_gpu=False) == [1]
    assert Settings(max_batch_size=8, warmup="full").warmup_sizes(on_gpu=False) == [8]
    assert Settings(max_batch_size=3).warmup_sizes(on_gpu=True) == [3, 2, 1]
    assert Settings(max_batch_size=3, warmup="full").warmup_sizes(on_gpu=True) == [3]
    assert Settings(max_batch_size=3, warmup="one").warmup_sizes(on_gpu=True) == [1]


def test_each_task_fetches_only_the_outputs_it_needs(model_root: Path, long_audio) -> None:
    data, ctype, _ = long_audio
    upload = Upload("a.wav", ctype, data)
    results = {}

    async def work(inference: Inference) -> None:
        results["embed"] = await inference.embed([upload], None)
        results["tokens"] = await inference.embed([upload], None, tokens=True)
        results["classify"] = await inference.classify([upload], None, top_k=1)
        results["tokenize"] = await inference.tokenize([upload], None)

    runs = recorded([model_root / "audio"], work, max_wait_ms=0.0)
    encoder = [names for _, _, names in _after_warm_up(runs[("micro-audio", "encoder")])]
    tokenizer = [names for _, _, names in _after_warm_up(runs[("micro-audio", "tokenizer")])]
    # /embed: no patch embeddings unless pooling=tokens; /classify: the logits alone
    assert encoder == [("embedding",), ("embedding", "patch_embeddings"), ("logits",)]
    assert tokenizer == [("codes",)]  # /tokenize: no quantized vectors
    (plain,), (tokens,) = results["embed"], results["tokens"]
    assert plain.tokens is None and tokens.tokens is not None
    np.testing.assert_allclose(plain.windows, tokens.windows, rtol=1e-6)


def test_a_failed_warm_up_is_logged_and_the_service_stays_not_ready(model_root: Path, caplog) -> None:
    models = load_models([model_root / "audio"], ProviderChooser(["CPUExecutionProvider"]), CpuThreads(1))

    class OutOfMemory:
        def run(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory (a stand-in)")

    models["micro-audio"].sessions["tokenizer"] = OutOfMemory()

    async def go() -> bool:
        inference = Inference(Settings(model_dirs=[model_root / "audio"]), models, Metrics.create())
        await inference.start()
        try:
            await inference.warm_up()
            return inference.ready
        finally:
            await inference.stop()

    assert asyncio.run(go()) is False
    assert any("warm-up failed" in r.getMessage() and r.exc_info for r in caplog.records)
