"""Every route and modality against a real server with three micro models (one module-scoped server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import Server, run_server

from bridle.model.decoding import decode_image
from bridle.model.manifest import read_manifest

AUDIO_FORMATS = ["wav", "flac", "mp3", "ogg"]
IMAGE_FORMATS = ["png", "jpeg"]
VIDEO_FORMATS = ["mp4", "webm"]


@pytest.fixture(scope="module")
def server(model_root: Path, unlabelled_dir: Path) -> Iterator[Server]:
    yield from run_server([model_root, unlabelled_dir], max_batch_size=8, max_wait_ms=5)


def post(server: Server, route: str, name: str, data: bytes, ctype: str, **params):
    return server.client.post(route, params=params, files={"file": (name, data, ctype)})


def test_health_ready_models_docs_and_page(server: Server) -> None:
    c = server.client
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/ready").status_code == 200
    models = {m["name"]: m for m in c.get("/models").json()["models"]}
    assert set(models) == {"micro-audio", "micro-image", "micro-video", "plain-image"}
    assert models["micro-audio"]["execution_provider"] == "CPUExecutionProvider"
    assert set(models["micro-audio"]["provider_options"]) == {"CPUExecutionProvider"}
    assert models["micro-audio"]["manifest"]["input"]["sample_rate"] == 16000
    assert "/embed" in c.get("/openapi.json").json()["paths"]
    assert c.get("/docs").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "/embed" in page.text


@pytest.mark.parametrize(
    ("fmt", "modality"),
    [(f, "audio") for f in AUDIO_FORMATS]
    + [(f, "image") for f in IMAGE_FORMATS]
    + [(f, "video") for f in VIDEO_FORMATS],
)
def test_embed_every_format_picks_the_model_of_its_modality(
    server: Server, media_files, fmt: str, modality: str
) -> None:
    data, ctype = media_files[fmt]
    r = post(server, "/embed", f"x.{fmt}", data, ctype)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert result["model"] == f"micro-{modality}" and result["modality"] == modality
    assert result["dim"] == 32 and len(result["embedding"]) == 32
    assert np.all(np.isfinite(result["embedding"]))


def test_embed_matches_onnx_runtime_on_the_decoded_image(
    server: Server, media_files, model_root: Path
) -> None:
    data, ctype = media_files["png"]
    manifest = read_manifest(model_root / "image")
    session = ort.InferenceSession(
        str(model_root / "image" / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    signal = decode_image(data, manifest.input.image_size)[None]  # (1, 3, S, S)
    (expected,) = session.run(["embedding"], {"signal": signal})
    got = post(server, "/embed", "a.png", data, ctype).json()["results"][0]["embedding"]
    np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-6)


def test_embed_normalize_and_token_pooling(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    (res,) = post(server, "/embed", "a.png", data, ctype, normalize="true", pooling="tokens").json()[
        "results"
    ]
    assert np.linalg.norm(res["embedding"]) == pytest.approx(1.0, abs=1e-5)
    tokens = np.array(res["windows"][0]["patch_embeddings"])
    assert tokens.shape == (16, 32)  # (N, D): micro-image has a 4 x 4 grid
    assert np.linalg.norm(tokens, axis=-1) == pytest.approx(np.ones(16), abs=1e-5)


def test_raw_body_with_its_content_type(server: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    r = server.client.post("/embed", content=data, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["model"] == "micro-audio"


def test_several_files_give_one_result_each_in_order(server: Server, media_files) -> None:
    names = ["wav", "png", "mp3", "jpeg", "mp4"]
    files = [("file", (f"f{i}.{n}", media_files[n][0], media_files[n][1])) for i, n in enumerate(names)]
    r = server.client.post("/embed", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [f"f{i}.{n}" for i, n in enumerate(names)]
    assert [x["modality"] for x in results] == ["audio", "image", "audio", "image", "video"]


def test_tokenize_returns_codes_on_the_patch_grid(server: Server, media_files) -> None:
    for fmt, grid, axes in [
        ("wav", [4, 4], ["time", "mel"]),
        ("png", [4, 4], ["height", "width"]),
        ("mp4", [2, 4, 4], ["time", "height", "width"]),
    ]:
        data, ctype = media_files[fmt]
        r = post(server, "/tokenize", f"x.{fmt}", data, ctype)
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["patch_grid"] == grid and res["grid_axes"] == axes and res["levels"] == 2
        codes = np.array(res["windows"][0]["codes"])
        assert codes.shape == (int(np.prod(grid)), 2)  # (N, L)
        assert codes.min() >= 0 and codes.max() < res["codebook_size"]


def test_classify_top_k_softmax(server: Server, media_files) -> None:
    data, ctype = media_files["jpeg"]
    (res,) = post(server, "/classify", "a.jpg", data, ctype, top_k=2).json()["results"]
    scores = [x["score"] for x in res["labels"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    (full,) = post(server, "/classify", "a.jpg", data, ctype, top_k=50).json()["results"]
    assert {x["label"] for x in full["labels"]} == {"cat", "dog", "eight", "five"}
    assert sum(x["score"] for x in full["labels"]) == pytest.approx(1.0, abs=1e-5)
    assert full["aggregate"] == "mean" and all("id" not in x for x in full["labels"])  # no label ids


def test_max_over_windows_is_refused_for_a_softmax_head(server: Server, long_audio) -> None:
    data, ctype, _ = long_audio
    r = post(server, "/classify", "long.wav", data, ctype, aggregate="max")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_aggregate"
    assert "multi-label" in r.json()["error"]["message"]
    r = post(server, "/classify", "long.wav", data, ctype, aggregate="median")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
    (res,) = post(server, "/classify", "long.wav", data, ctype, aggregate="mean", top_k=4).json()["results"]
    assert res["aggregate"] == "mean"
    windows = [{x["label"]: x["score"] for x in w["labels"]} for w in res["windows"]]
    for x in res["labels"]:  # every window is a full window of signal: equal weights
        assert x["score"] == pytest.approx(np.mean([w[x["label"]] for w in windows]), abs=1e-9)


def test_long_audio_is_cut_into_windows(server: Server, long_audio) -> None:
    data, ctype, window_seconds = long_audio  # 2.5 windows long
    for route in ("/embed", "/tokenize", "/classify"):
        (res,) = post(server, route, "long.wav", data, ctype).json()["results"]
        spans = [(w["start"], w["end"]) for w in res["windows"]]
        assert len(spans) == 3
        assert spans[0][0] == 0.0 and spans[1][0] == pytest.approx(window_seconds)
        # the last window ends at the clip's end, a full window overlapping the one before
        assert spans[2] == pytest.approx((1.5 * window_seconds, 2.5 * window_seconds), abs=0.01)
        if route == "/embed":
            mean = np.mean([w["embedding"] for w in res["windows"]], axis=0)
            np.testing.assert_allclose(res["embedding"], mean, rtol=1e-5, atol=1e-6)


def test_long_video_is_cut_into_clips(server: Server, long_video) -> None:
    data, ctype = long_video  # 2.5 s, the micro video model's clip is 1 s
    (res,) = post(server, "/embed", "long.mp4", data, ctype).json()["results"]
    assert len(res["windows"]) == 3 and res["windows"][1]["start"] == pytest.approx(1.0)
    last = res["windows"][2]  # a whole clip ending at the video's end, as audio's last window
    assert last["end"] == res["duration"] and last["end"] - last["start"] == pytest.approx(1.0)


def test_model_query_parameter(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    assert (
        post(server, "/embed", "a.png", data, ctype, model="plain-image").json()["results"][0]["model"]
        == "plain-image"
    )
    r = post(server, "/embed", "a.png", data, ctype, model="nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    r = post(server, "/embed", "a.png", data, ctype, model="micro-audio")
    assert r.status_code == 415 and r.json()["error"]["code"] == "wrong_modality"
    r = post(server, "/classify", "a.png", data, ctype, model="plain-image")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_classifier"
