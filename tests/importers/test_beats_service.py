"""An imported BEATs model through the real HTTP service: label_dict's labels, independent sigmoid scores
(with a threshold), and the VQ tokenizer's codes, each equal to the upstream port's on the same audio."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch

from bridle.data.beats_files import LABELS, wav16
from bridle.export.verify import sample_inputs
from bridle.model.decoding import decode_audio
from bridle.model.manifest import read_manifest
from bridle.model.preprocessing import build_preprocessor
from tests.importers.exported import Exported

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def one_window(exported: Exported) -> dict[str, Any]:
    """A 16-bit wav exactly one window long, and what the upstream port says of the samples it holds."""
    config = read_manifest(exported.model_dir).config()
    signal = sample_inputs(config, 1, seed=7)[0]  # (window_samples,) speech-like
    data = wav16(signal)
    samples = decode_audio(data, 16_000)  # what the service will see
    assert samples.shape == signal.shape
    with torch.no_grad():
        fbank = build_preprocessor(config)(torch.from_numpy(samples)[None])[:, 0]  # (1, frames, 128)
        _, logits = exported.model.extract_features(fbank)
        codes, _ = exported.tokenizer.extract_labels(fbank)
    return {"wav": data, "probs": torch.sigmoid(logits)[0].double().numpy(), "codes": codes[0].numpy()}


def _post(client: httpx.Client, route: str, data: bytes, **params: Any) -> dict[str, Any]:
    r = client.post(route, params=params, files={"file": ("clip.wav", data, "audio/wav")})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_classify_returns_independent_sigmoid_scores(
    client: httpx.Client, one_window: dict[str, Any]
) -> None:
    result = _post(client, "/classify", one_window["wav"], top_k=len(LABELS))
    assert len(result["windows"]) == 1
    expected = one_window["probs"]  # (C,) in label_dict's index order
    got = {x["label"]: x["score"] for x in result["labels"]}
    assert set(got) == set(LABELS)
    assert max(abs(got[label] - expected[i]) for i, label in enumerate(LABELS)) <= TOLERANCE
    assert [x["label"] for x in result["labels"]] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]
    assert abs(sum(got.values()) - 1.0) > 0.05  # independent probabilities, not a softmax
    assert result["aggregate"] == "max"  # a multi-label head's default
    assert all("id" not in x for x in result["labels"])  # imported without --labels: no ids beside them

    threshold = float(np.sort(expected)[-3] - 1e-3)  # between the 3rd and 4th best: keeps three
    kept = _post(client, "/classify", one_window["wav"], top_k=len(LABELS), threshold=threshold)
    assert [x["label"] for x in kept["labels"]] == [x["label"] for x in result["labels"][:3]]
    assert all(x["score"] >= threshold for x in kept["windows"][0]["labels"])
    top1 = _post(client, "/classify", one_window["wav"], top_k=1, threshold=threshold)
    assert [x["label"] for x in top1["labels"]] == [result["labels"][0]["label"]]


def test_threshold_out_of_range_is_a_422(client: httpx.Client, one_window: dict[str, Any]) -> None:
    r = client.post("/classify", params={"threshold": 1.5}, files={"file": ("a.wav", one_window["wav"])})
    assert r.status_code == 422 and "threshold" in r.text


def test_tokenize_returns_the_vq_tokenizers_codes(client: httpx.Client, one_window: dict[str, Any]) -> None:
    result = _post(client, "/tokenize", one_window["wav"])
    assert (result["levels"], result["codebook_size"], result["tokenizer_kind"]) == (1, 32, "trained")
    codes = np.array(result["windows"][0]["codes"])  # (N, 1)
    assert codes.shape == (32, 1)
    assert np.array_equal(codes[:, 0], one_window["codes"])


def test_models_route_shows_the_sigmoid_head(client: httpx.Client) -> None:
    (model,) = client.get("/models").json()["models"]
    assert model["manifest"]["classifier"] == {"activation": "sigmoid"}
    assert model["manifest"]["labels"] == LABELS
    assert model["manifest"]["provenance"]["licence"] == "MIT"
