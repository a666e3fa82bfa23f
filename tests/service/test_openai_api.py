"""The OpenAI embeddings API (`POST /v1/embeddings`, `GET /v1/models`) driven by the official `openai`
client against a real server over three micro models, with the same API key, limits and admission as
`/embed`."""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import API_KEY, Server, run_server
from test_hardening import slow_body

from bench.serve import BUNDLED, running_service
from bridle.data.media_files import make_audio
from bridle.model.manifest import read_manifest
from bridle.service.schemas import EmbeddingsResponse, ModelList, OpenAIErrorBody

MAX_IN_FLIGHT = 4
MAX_UPLOAD = 2_000_000
FILES = {"audio": "wav", "image": "png", "video": "mp4"}
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server(
        [model_root],
        api_key=API_KEY,
        max_concurrent_requests=MAX_IN_FLIGHT,
        max_upload_bytes=MAX_UPLOAD,
        max_batch_size=4,
        max_wait_ms=5,
    )


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=30) as c:
        yield c


def data_url(data: bytes, ctype: str) -> str:
    return f"data:{ctype};base64,{base64.b64encode(data).decode()}"


def embed(server: Server, data: bytes, ctype: str) -> np.ndarray:
    """The clip embedding `/embed` gives."""
    r = server.client.post("/embed", content=data, headers={"content-type": ctype, **KEY})
    assert r.status_code == 200, r.text
    return np.array(r.json()["results"][0]["embedding"])


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def post(server: Server, body: dict | bytes, **headers: str) -> httpx.Response:
    if isinstance(body, dict):
        return server.client.post("/v1/embeddings", json=body, headers={**KEY, **headers})
    return server.client.post("/v1/embeddings", content=body, headers={**KEY, **headers})


def error_of(r: httpx.Response, status: int, code: str, param: str | None) -> str:
    """The OpenAI-shaped error of `r`, checked; its message."""
    assert r.status_code == status, r.text
    body = OpenAIErrorBody.model_validate(r.json())
    assert (body.error.code, body.error.param) == (code, param), r.text
    assert body.error.type == ("invalid_request_error" if status < 500 else "server_error")
    return body.error.message


# ---- the official client ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float", "base64", None])
@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_the_openai_client_gets_the_vectors_of_embed(
    server: Server, client: openai.OpenAI, media_files, model_root: Path, modality: str, encoding: str | None
) -> None:
    """encoding None: the client's default, which asks for base64 and decodes it itself."""
    data, ctype = media_files[FILES[modality]]
    extra = {} if encoding is None else {"encoding_format": encoding}
    r = client.embeddings.create(model=f"micro-{modality}", input=data_url(data, ctype), **extra)
    (item,) = r.data
    vector = item.embedding
    if encoding == "base64":  # asked for explicitly, the client leaves it to the caller to decode
        assert isinstance(vector, str)
        vector = np.frombuffer(base64.b64decode(vector), "<f4")
    manifest = read_manifest(model_root / modality)
    assert item.index == 0 and r.model == f"micro-{modality}"
    assert len(vector) == manifest.embedding_dim
    assert cosine(vector, embed(server, data, ctype)) >= 0.9999
    assert r.usage.prompt_tokens == r.usage.total_tokens == math.prod(manifest.patch_grid)  # one window


def test_a_list_of_inputs_gives_one_item_per_input_in_order(
    server: Server, client: openai.OpenAI, media_files, long_audio, model_root: Path
) -> None:
    long_wav, _, _ = long_audio
    files = [media_files["wav"], (long_wav, "audio/wav"), media_files["flac"], media_files["ogg"]]
    inputs = [
        data_url(*files[0]),
        base64.b64encode(files[1][0]).decode(),  # plain base64: the bytes say what it is
        data_url(*files[2]),
        data_url(*files[3]),
    ]
    r = client.embeddings.create(model="micro-audio", input=inputs)  # base64, decoded by the client
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    for item, (data, ctype) in zip(r.data, files, strict=True):
        assert cosine(item.embedding, embed(server, data, ctype)) >= 0.9999
    windows = [
        len(
            server.client.post("/embed", content=d, headers={"content-type": c, **KEY}).json()["results"][0][
                "windows"
            ]
        )
        for d, c in files
    ]
    patches = math.prod(read_manifest(model_root / "audio").patch_grid)
    assert windows[1] == 3 and r.usage.prompt_tokens == sum(windows) * patches


def test_base64_is_little_endian_float32_and_the_answer_has_its_model(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    body = {"model": "micro-image", "input": [data_url(data, ctype)], "user": "ignored"}
    floats = post(server, body)
    packed = post(server, {**body, "encoding_format": "base64"})
    for r in (floats, packed):
        assert r.status_code == 200, r.text
        EmbeddingsResponse.model_validate(r.json())
    vector = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vector, floats.json()["data"][0]["embedding"], rtol=1e-6)
    assert packed.json()["object"] == "list" and packed.json()["data"][0]["object"] == "embedding"


def test_dimensions_is_accepted_only_as_the_models_own(
    server: Server, client: openai.OpenAI, media_files
) -> None:
    url = data_url(*media_files["png"])
    assert (
        len(client.embeddings.create(model="micro-image", input=url, dimensions=32).data[0].embedding) == 32
    )
    r = post(server, {"model": "micro-image", "input": url, "dimensions": 16})
    assert "32 dimensions, not 16" in error_of(r, 400, "bad_dimensions", "dimensions")


def test_models_list_and_retrieve(server: Server, client: openai.OpenAI) -> None:
    names = {m.id for m in client.models.list()}
    assert names == {"micro-audio", "micro-image", "micro-video"}
    model = client.models.retrieve("micro-video")
    assert (model.id, model.object, model.owned_by) == ("micro-video", "model", "bridle")
    assert model.created > 1_700_000_000
    ModelList.model_validate(server.client.get("/v1/models", headers=KEY).json())
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "unknown_model"


def test_openapi_lists_the_routes(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(paths)
    body = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "input"} <= set(body["required"])


# ---- errors -----------------------------------------------------------------------------------------


def test_errors_name_the_input_they_are_about(server: Server, client: openai.OpenAI, media_files) -> None:
    wav = data_url(*media_files["wav"])
    png = data_url(*media_files["png"])
    cases = [
        (["not base64 !", wav], 400, "bad_base64", "input[0]"),
        ([wav, "data:audio/wav,plain"], 400, "bad_data_url", "input[1]"),
        ([wav, wav, "data:audio/wav;base64"], 400, "bad_data_url", "input[2]"),
        ([wav, "data:audio/wav;base64,"], 400, "empty", "input[1]"),
        ([wav, data_url(b"RIFF" + b"\0" * 60, "audio/wav")], 422, "corrupt", "input[1]"),
        ([wav, png], 415, "wrong_modality", "input[1]"),
        ([wav, base64.b64encode(b"no magic here").decode()], 422, "corrupt", "input[1]"),
        ([wav, 7], 400, "invalid_parameter", "input[1]"),
        ([[1, 2, 3]], 400, "invalid_parameter", "input[0]"),
        ([], 400, "invalid_parameter", "input"),
    ]
    for inputs, status, code, param in cases:
        message = error_of(post(server, {"model": "micro-audio", "input": inputs}), status, code, param)
        assert message.startswith(param), message
    # the official client raises them with the body it got
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(
            model="micro-audio", input=[wav, data_url(b"RIFF" + b"\0" * 60, "audio/wav")]
        )
    assert e.value.body["param"] == "input[1]" and e.value.body["code"] == "corrupt"


def test_an_unknown_model_and_bad_bodies(server: Server, client: openai.OpenAI, media_files) -> None:
    wav = data_url(*media_files["wav"])
    assert "micro-audio" in error_of(
        post(server, {"model": "nope", "input": wav}), 404, "unknown_model", "model"
    )
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input=wav)
    error_of(post(server, {"input": wav}), 400, "invalid_parameter", "model")
    error_of(
        post(server, {"model": "micro-audio", "input": wav, "encoding_format": "x"}),
        400,
        "invalid_parameter",
        "encoding_format",
    )
    error_of(post(server, b"{not json", **{"content-type": "application/json"}), 400, "bad_request", None)
    error_of(post(server, b"[1, 2]", **{"content-type": "application/json"}), 400, "bad_request", None)
    error_of(post(server, b"", **{"content-type": "application/json"}), 400, "empty", None)
    error_of(post(server, media_files["wav"][0], **{"content-type": "audio/wav"}), 415, "unsupported", None)
    r = server.client.get("/v1/embeddings", headers=KEY)  # routing's own answer: the service's shape
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text


def test_the_api_key_and_the_limits_of_embed(server: Server, media_files, audio_of_seconds) -> None:
    body = {"model": "micro-audio", "input": data_url(*media_files["wav"])}
    assert server.client.post("/v1/embeddings", json=body).status_code == 401
    r = server.client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong"})
    error_of(r, 401, "unauthorized", None)
    assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert (
        server.client.post(
            "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 200
    )
    # the body limit is the upload limit: here the whole JSON body, base64 and all
    big = {"model": "micro-audio", "input": "A" * MAX_UPLOAD}
    error_of(post(server, big), 413, "too_large", None)
    # the window limit of a request (BRIDLE_MAX_WINDOWS, 512): 600 inputs of one window each
    many = {"model": "micro-audio", "input": [data_url(make_audio("wav", 0.05), "audio/wav")] * 600}
    error_of(post(server, many), 413, "too_many_windows", None)


# ---- admission ----------------------------------------------------------------------------------------


def test_embeddings_share_the_in_flight_bound_with_embed(server: Server, media_files) -> None:
    """Requests to /v1/embeddings held in flight fill the bound that /embed's fill: the next request to
    either is refused at once with 503 and Retry-After."""
    wav, ctype = media_files["wav"]
    body = httpx.Request("POST", "/", json={"model": "micro-audio", "input": data_url(wav, ctype)}).content
    release = threading.Event()

    def held(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30, headers=KEY) as c:
            return c.post(
                "/v1/embeddings",
                content=slow_body(body, release),
                headers={"content-type": "application/json"},
            )

    with ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
        holding = [pool.submit(held, i) for i in range(MAX_IN_FLIGHT)]
        deadline = time.monotonic() + 10
        while f"bridle_in_flight {MAX_IN_FLIGHT}.0" not in server.client.get("/metrics", headers=KEY).text:
            assert time.monotonic() < deadline, "the held requests never were in flight"
            time.sleep(0.02)
        refused = [
            post(server, body, **{"content-type": "application/json"}),
            server.client.post("/embed", content=wav, headers={"content-type": ctype, **KEY}),
        ]
        release.set()
        served = [f.result() for f in holding]
    for r in refused:
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
        assert r.headers["retry-after"]
    assert [r.status_code for r in served] == [200] * MAX_IN_FLIGHT
    assert post(server, body, **{"content-type": "application/json"}).status_code == 200


# ---- through front-end processes and the engine -------------------------------------------------------


@pytest.mark.slow
def test_front_end_processes_answer_what_embed_answers(media_files) -> None:
    """`bridle-serve` with BRIDLE_FRONTENDS=2 on the bundled digit models: the routes run in the front ends
    (manifests only) and the graphs in the engine process."""
    digits = [d for d in BUNDLED if d.name in ("audio-digits", "image-digits", "video-motion")]
    with running_service(digits, {"BRIDLE_FRONTENDS": "2"}) as service:
        client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=60)
        names = {m.id for m in client.models.list()}
        assert names == {"audio-digits", "image-digits", "video-motion"}
        for model, fmt in (("audio-digits", "wav"), ("image-digits", "png"), ("video-motion", "mp4")):
            data, ctype = media_files[fmt]
            r = client.embeddings.create(model=model, input=[data_url(data, ctype)] * 2)
            want = httpx.post(
                f"{service.url}/embed",
                params={"model": model},
                content=data,
                headers={"content-type": ctype},
                timeout=60,
            )
            assert want.status_code == 200, want.text
            for item in r.data:
                assert cosine(item.embedding, want.json()["results"][0]["embedding"]) >= 0.9999
        client.close()
