"""Imported Hugging Face models (one per modality: ViT, VideoMAE, AST; seeded random weights) through the
real HTTP service: /classify answers with config.id2label's names and transformers' own scores, /embed
with the input of its classification head."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridle.data.media_files import encode_audio, make_image, make_video
from bridle.model.decoding import decode_audio, decode_image
from tests.live_server import Server, run_server

pytest.importorskip("transformers", reason="the parity tests need the `import` extra (transformers)")

from bridle.data.hf_models import load_model, make_folder, reference
from tests.importers.hf_export import EXPECTED_LABELS, TOLERANCE, import_and_export

FAMILIES = {"image": "vit", "video": "videomae", "audio": "ast"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """modality -> (Hugging Face folder, exported model directory)."""
    root = tmp_path_factory.mktemp("hf-service")
    out = {}
    for modality, family in FAMILIES.items():
        folder = make_folder(family, root, seed=3)
        out[modality] = (folder, import_and_export(folder, root))
    return out


@pytest.fixture(scope="module")
def server(folders: dict[str, tuple[Path, Path]]) -> Iterator[Server]:
    yield from run_server([model_dir for _, model_dir in folders.values()])


def _post(server: Server, route: str, name: str, data: bytes, ctype: str, **params: Any) -> dict[str, Any]:
    r = server.client.post(route, params=params, files={"file": (name, data, ctype)})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))


def _check(result: dict[str, Any], probs: np.ndarray) -> None:
    got = {x["label"]: x["score"] for x in result["labels"]}
    assert set(got) == set(EXPECTED_LABELS)
    assert max(abs(got[name] - probs[i]) for i, name in enumerate(EXPECTED_LABELS)) <= TOLERANCE
    assert result["labels"][0]["label"] == EXPECTED_LABELS[int(probs.argmax())]


@pytest.mark.slow
def test_image_model_classifies_and_embeds(server: Server, folders: dict[str, tuple[Path, Path]]) -> None:
    folder, _ = folders["image"]
    data = make_image("png", (32, 32))
    pixels = decode_image(data, 32)[None]  # (1, 3, 32, 32): what the service feeds the graph
    embedding, logits = reference("vit", folder, load_model(folder), pixels)
    _check(_post(server, "/classify", "a.png", data, "image/png", top_k=5), _softmax(logits[0]))
    result = _post(server, "/embed", "a.png", data, "image/png")
    assert np.abs(np.array(result["embedding"]) - embedding[0]).max() <= TOLERANCE


@pytest.mark.slow
def test_audio_model_classifies_and_embeds(server: Server, folders: dict[str, tuple[Path, Path]]) -> None:
    folder, _ = folders["audio"]
    rng = np.random.default_rng(5)
    samples = 63 * 160 + 400  # one window of the small AST (64 frames)
    t = np.arange(samples) / 16_000
    wave_ = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples)
    data = encode_audio(np.clip(wave_, -1, 1).astype(np.float32), "wav", 16_000)  # 16-bit pcm
    signal = decode_audio(data, 16_000)[None]  # (1, samples)
    embedding, logits = reference("ast", folder, load_model(folder), signal)
    result = _post(server, "/classify", "a.wav", data, "audio/wav", top_k=5)
    assert len(result["windows"]) == 1
    _check(result, _sigmoid(logits[0]))  # AST's AudioSet heads are multi-label
    result = _post(server, "/embed", "a.wav", data, "audio/wav")
    assert np.abs(np.array(result["embedding"]) - embedding[0]).max() <= TOLERANCE


@pytest.mark.slow
def test_video_model_classifies_and_embeds(server: Server) -> None:
    data = make_video("mp4", 0.4, fps=10, size=(32, 32))  # 4 frames, the small VideoMAE's clip
    result = _post(server, "/classify", "a.mp4", data, "video/mp4", top_k=5)
    scores = [x["score"] for x in result["labels"]]
    assert {x["label"] for x in result["labels"]} == set(EXPECTED_LABELS)
    assert abs(sum(scores) - 1.0) < 1e-4  # a softmax head
    result = _post(server, "/embed", "a.mp4", data, "video/mp4")
    assert len(result["embedding"]) == 32
    (model,) = [m for m in server.client.get("/models").json()["models"] if m["modality"] == "video"]
    assert model["manifest"]["labels"] == EXPECTED_LABELS
