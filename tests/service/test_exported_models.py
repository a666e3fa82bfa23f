"""Every route on each exported micro model: flac audio, jpeg image, webm video."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, run_server
from model_dirs import LABELS


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server([model_root], max_batch_size=4)


@pytest.mark.parametrize(("fmt", "modality"), [("flac", "audio"), ("jpeg", "image"), ("webm", "video")])
def test_every_route_on_an_exported_model(server: Server, media_files, fmt: str, modality: str) -> None:
    data, ctype = media_files[fmt]
    f = {"file": (f"x.{fmt}", data, ctype)}
    (emb,) = server.client.post("/embed", files=f, params={"normalize": "true"}).json()["results"]
    assert emb["model"] == f"micro-{modality}" and emb["dim"] == 32
    assert np.linalg.norm(emb["embedding"]) == pytest.approx(1.0, abs=1e-4)
    (tok,) = server.client.post("/tokenize", files=f).json()["results"]
    codes = np.array(tok["windows"][0]["codes"])
    assert codes.shape == (int(np.prod(tok["patch_grid"])), tok["levels"])
    assert codes.min() >= 0 and codes.max() < tok["codebook_size"]
    (cls,) = server.client.post("/classify", files=f, params={"top_k": 10}).json()["results"]
    assert sorted(x["label"] for x in cls["labels"]) == sorted(LABELS)
