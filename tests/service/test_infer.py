"""The inference layer on its own: real micro models and ONNX Runtime sessions, no HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bridle.runtime.models import load_models
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from bridle.service.errors import ServiceError
from bridle.service.infer import Inference
from bridle.service.media import Upload
from bridle.service.metrics import Metrics
from bridle.service.settings import Settings


def run_with(model_dirs: list[Path], work, **overrides):
    """Load the models, start an `Inference`, await `work(inference)` inside the loop, stop it."""
    settings = Settings(model_dirs=model_dirs, **overrides)
    models = load_models(model_dirs, ProviderChooser(["CPUExecutionProvider"]), CpuThreads(intra_op=1))

    async def go():
        inference = Inference(settings, models, Metrics.create())
        await inference.start()
        try:
            return await work(inference)
        finally:
            await inference.stop()

    return asyncio.run(go())


def test_embed_tokenize_classify_give_typed_results(model_root: Path, long_audio) -> None:
    data, ctype, _ = long_audio  # 2.5 windows of micro-audio
    upload = Upload("a.wav", ctype, data)

    async def work(inference: Inference):
        return (
            await inference.embed([upload], None, tokens=True, normalize=True),
            await inference.tokenize([upload], None),
            await inference.classify([upload], "micro-audio", top_k=2),
        )

    (emb,), (codes,), (labels,) = run_with([model_root / "audio"], work)
    assert emb.source.model.name == "micro-audio" and len(emb.source.spans) == 3
    patches = int(np.prod(emb.source.model.manifest.patch_grid))
    assert emb.windows.shape == (3, 32) and emb.tokens is not None and emb.tokens.shape == (3, patches, 32)
    np.testing.assert_allclose(np.linalg.norm(emb.windows, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.clip), 1.0, rtol=1e-5)
    assert codes.codes.shape[0] == 3 and codes.codes.dtype == np.int64
    assert len(labels.clip) == 2 and all(len(w) == 2 for w in labels.windows)
    assert labels.clip[0].score >= labels.clip[1].score


def test_the_classifier_is_checked_before_anything_is_decoded(unlabelled_dir: Path) -> None:
    # not an image at all: had it been decoded first, this would be 422 "corrupt"
    garbage = Upload("x.png", "image/png", b"not a png" * 10)

    async def work(inference: Inference):
        with pytest.raises(ServiceError) as e:
            await inference.classify([garbage], None, top_k=1)
        return e.value

    error = run_with([unlabelled_dir], work)
    assert (error.status, error.code) == (422, "no_classifier")


@pytest.mark.parametrize("limits", [{"max_windows": 2}, {"queue_size": 1, "max_batch_size": 2}])
def test_more_windows_than_a_request_may_hold_is_413(model_root: Path, long_audio, limits) -> None:
    data, ctype, _ = long_audio  # 3 windows

    async def work(inference: Inference):
        with pytest.raises(ServiceError) as e:
            await inference.embed([Upload("a.wav", ctype, data)], None)
        return e.value

    error = run_with([model_root / "audio"], work, **limits)
    assert (error.status, error.code) == (413, "too_many_windows")
