"""BEATs at its real window (992 frames: 9.935 s) through the real HTTP service (issue 29): AudioSet-length
clips make the windows upstream would (a 10.0 s clip is one window, scored as upstream BEATs scores the
whole clip), longer clips end on a full window, the clip's scores pool the windows' (max by default for
this multi-label head, or their mean), and the labels are the CSV's display names with their mids."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch

from bridle.data import reference_beats as ref
from bridle.data.beats_files import LABELS, MIDS, wav16
from bridle.export.verify import sample_inputs
from bridle.model.decoding import decode_audio
from bridle.model.manifest import read_manifest
from tests.importers.exported import Exported

RATE = 16_000
TOLERANCE = 1e-4
CASES = [
    (9.9, [(0.0, 9.9)]),  # shorter than the window: one window, centred
    (10.0, [(0.0, 9.935)]),  # AudioSet's length, 0.65 % over: one window, the last 65 ms dropped
    (10.5, [(0.0, 9.935), (0.565, 10.5)]),  # the last window ends at the end, overlapping
    (25.0, [(0.0, 9.935), (9.935, 19.87), (15.065, 25.0)]),
]


@pytest.fixture(scope="module")
def speech(exported_audioset: Exported) -> np.ndarray:
    """25 s of speech-like audio (three different windows' worth, cut)."""
    config = read_manifest(exported_audioset.model_dir).config()
    return np.concatenate(sample_inputs(config, 3, seed=11))[: 25 * RATE]  # (400000,)


def _post(client: httpx.Client, route: str, data: bytes, **params: Any) -> dict[str, Any]:
    r = client.post(route, params=params, files={"file": ("clip.wav", data, "audio/wav")})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def _by_id(labels: list[dict[str, Any]]) -> dict[str, float]:
    return {x["id"]: x["score"] for x in labels}


@pytest.mark.parametrize(("seconds", "spans"), CASES)
def test_clip_lengths_make_upstreams_windows_and_pool_them(
    audioset_client: httpx.Client, speech: np.ndarray, seconds: float, spans: list[tuple[float, float]]
) -> None:
    data = wav16(speech[: round(seconds * RATE)])
    top = len(LABELS)
    tagged = _post(audioset_client, "/classify", data, top_k=top)
    got = [(w["start"], w["end"]) for w in tagged["windows"]]
    assert len(got) == len(spans)
    np.testing.assert_allclose(got, spans, rtol=0, atol=1e-9)
    assert tagged["duration"] == pytest.approx(seconds)
    # display names from the CSV, each with its mid beside it
    assert all(x["label"] == LABELS[MIDS.index(x["id"])] for x in tagged["labels"])
    windows = [_by_id(w["labels"]) for w in tagged["windows"]]  # (W, C) as dicts
    assert tagged["aggregate"] == "max"  # the multi-label default
    for mid, score in _by_id(tagged["labels"]).items():
        assert score == max(w[mid] for w in windows)
    averaged = _post(audioset_client, "/classify", data, top_k=top, aggregate="mean")
    assert averaged["aggregate"] == "mean"
    for mid, score in _by_id(averaged["labels"]).items():  # every window is full: equal weights
        assert score == pytest.approx(np.mean([w[mid] for w in windows]), abs=1e-12)
    embedded = _post(audioset_client, "/embed", data)
    assert len(embedded["windows"]) == len(spans)
    mean = np.mean([w["embedding"] for w in embedded["windows"]], axis=0)
    np.testing.assert_allclose(embedded["embedding"], mean, rtol=0, atol=1e-6)


def test_a_10_s_clip_is_scored_as_upstream_scores_it(
    audioset_client: httpx.Client, exported_audioset: Exported, speech: np.ndarray
) -> None:
    data = wav16(speech[: 10 * RATE])
    samples = decode_audio(data, RATE)  # what the service sees: (160000,)
    fbank = ref.preprocess(samples[None].astype(np.float64))  # (1, 998, 128): upstream's whole clip
    assert fbank.shape[1] == 998
    with torch.no_grad():  # its patch embedding drops the 6 frames that do not fill a patch
        _, logits = exported_audioset.model.extract_features(fbank)
    expected = torch.sigmoid(logits)[0].double().numpy()  # (C,) in class-index order
    got = _by_id(_post(audioset_client, "/classify", data, top_k=len(MIDS))["labels"])
    assert max(abs(got[mid] - expected[i]) for i, mid in enumerate(MIDS)) <= TOLERANCE


def test_the_manifest_keeps_names_and_ids(audioset_client: httpx.Client) -> None:
    (model,) = audioset_client.get("/models").json()["models"]
    assert model["manifest"]["labels"] == LABELS and model["manifest"]["label_ids"] == MIDS
    assert model["manifest"]["input"]["window_seconds"] == pytest.approx(9.935)
