"""`bridle.client` (sync and async) and `bridle-client embed ... --out` against a real server on the
bundled models; the command's table against the batch job's own, computed on the same files."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from bridle.batch.settings import DEFAULT_LIMITS
from bridle.batch.worker import ShardProcessor
from bridle.client import AsyncClient, Client, ClientError, Codes, Embedding, Labels, main
from bridle.data.media_files import make_audio, make_image, make_video
from bridle.runtime.models import load_model
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from tests.live_server import Server, run_server

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
# the digit models: each the first of its kind, so an upload without a model name goes to it
DIGIT_MODELS = [MODELS / m for m in ("audio-digits", "image-digits", "video-motion")]
KEY = "client-key"
AUDIO_WINDOW_S = 1.295  # models/audio-digits


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from run_server(DIGIT_MODELS, api_key=KEY, max_batch_size=4, max_wait_ms=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    make_audio(root / "speech.wav", 2.5 * AUDIO_WINDOW_S, kind="speechlike", sample_rate=8000)  # 3 windows
    make_audio(root / "tone.flac", 0.7, hz=660.0)
    make_audio(root / "noise.mp3", 1.5, kind="noise")
    (root / "digit.png").write_bytes(make_image("png", (40, 30)))
    (root / "photo.jpeg").write_bytes(make_image("jpeg", (64, 48)))
    (root / "clip.mp4").write_bytes(make_video("mp4", 2.5))
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt \xff\xff\xff\x7fnot a wav")
    return {p.name: p for p in root.iterdir()}


def raw(server: Server, route: str, path: Path, **params) -> dict:
    """The service's own answer for one file."""
    r = server.client.post(
        route, params=params, files={"file": (path.name, path.read_bytes())}, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


# ---- the library ------------------------------------------------------------------------------------------


def test_embed_tokenize_classify_give_the_services_answers_as_arrays(server: Server, files) -> None:
    speech = files["speech.wav"]
    with Client(server.url, KEY) as c:
        e = c.embed(speech)
        codes = c.tokenize(str(speech))
        labels = c.classify(speech.read_bytes(), top_k=3)
    expect = raw(server, "/embed", speech)
    assert isinstance(e, Embedding) and e.source == str(speech) and e.model == "audio-digits"
    assert e.embedding.dtype == np.float32 and e.embedding.shape == (192,)
    assert e.windows.shape == (3, 192)
    np.testing.assert_array_equal(e.embedding, np.float32(expect["embedding"]))
    np.testing.assert_array_equal(e.windows, np.float32([w["embedding"] for w in expect["windows"]]))
    np.testing.assert_array_equal(e.start, [w["start"] for w in expect["windows"]])
    np.testing.assert_array_equal(e.end, [w["end"] for w in expect["windows"]])
    assert e.duration == expect["duration"] and e.end[-1] == pytest.approx(e.duration)

    tokens = raw(server, "/tokenize", speech)
    assert isinstance(codes, Codes) and codes.codes.dtype == np.int32
    assert codes.codes.shape == (3, 32, 4)  # windows, patches (8 x 4), levels
    np.testing.assert_array_equal(codes.codes, np.array([w["codes"] for w in tokens["windows"]]))
    assert codes.patch_grid == [8, 4] and codes.codebook_size == 128

    top = raw(server, "/classify", speech, top_k=3)
    assert isinstance(labels, Labels) and labels.source is None  # bytes have no name
    assert labels.labels == [x["label"] for x in top["labels"]]
    np.testing.assert_array_equal(labels.scores, [x["score"] for x in top["labels"]])
    assert [len(w) for w in labels.window_labels] == [3, 3, 3] and labels.aggregate == "mean"


def test_numpy_arrays_are_sent_as_media(server: Server) -> None:
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.3, 0.3, 8000).astype(np.float32)  # 1 s of noise at the model's rate
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with Client(server.url, KEY) as c:
        audio, picture = c.embed([wave, image], sample_rate=8000)
        pcm = c.embed(np.round(wave * 32768).astype(np.int16), sample_rate=8000)
        with pytest.raises(ValueError, match="sample_rate"):
            c.embed(wave)
        with pytest.raises(ValueError, match="neither"):
            c.embed(np.zeros((2, 3, 4, 5), np.uint8))
    assert (audio.model, picture.model) == ("audio-digits", "image-digits")
    assert audio.duration == pytest.approx(1.0) and len(audio.start) == 1
    assert picture.duration is None and np.isnan(picture.start).all() and np.isnan(picture.end).all()
    cos = audio.embedding @ pcm.embedding / np.linalg.norm(audio.embedding) / np.linalg.norm(pcm.embedding)
    assert cos > 0.999  # the same sound as float32 and as 16-bit PCM


def test_a_list_comes_back_in_order_with_a_progress_bar(server: Server, files, capsys) -> None:
    names = ["digit.png", "speech.wav", "clip.mp4", "photo.jpeg", "tone.flac", "noise.mp3"] * 2
    with Client(server.url, KEY, concurrency=3, progress=True) as c:
        found = c.embed([files[n] for n in names])
    assert [e.source for e in found] == [str(files[n]) for n in names]
    assert [e.modality for e in found[:6]] == ["image", "audio", "video", "image", "audio", "audio"]
    assert "12/12" in capsys.readouterr().err


def test_errors_raise_or_take_their_place(server: Server, files) -> None:
    with Client(server.url, KEY) as c:
        with pytest.raises(ClientError) as e:
            c.embed([files["tone.flac"], files["broken.wav"]])
        assert (e.value.status, e.value.code, e.value.source) == (422, "corrupt", str(files["broken.wav"]))
        ok, bad = c.embed([files["tone.flac"], files["broken.wav"]], return_exceptions=True)
        assert isinstance(ok, Embedding) and isinstance(bad, ClientError) and bad.code == "corrupt"
        with pytest.raises(ClientError, match="unknown_model"):
            c.classify(files["digit.png"], model="nope")
    with Client(server.url, "wrong") as c, pytest.raises(ClientError) as e:
        c.embed(files["tone.flac"])
    assert (e.value.status, e.value.code) == (401, "unauthorized")


def test_the_async_client_gives_what_the_sync_one_gives(server: Server, files) -> None:
    paths = [files[n] for n in ("speech.wav", "digit.png", "clip.mp4")]

    async def run() -> tuple[list, list, list]:
        async with AsyncClient(server.url, KEY, concurrency=2) as c:
            embedded = await c.embed(paths)
            codes = await c.tokenize(paths)
            failed = await c.embed([paths[0], files["broken.wav"]], return_exceptions=True)
            with pytest.raises(ClientError):
                await c.classify(files["broken.wav"])
            return embedded, codes, failed

    embedded, codes, failed = asyncio.run(run())
    with Client(server.url, KEY) as c:
        sync = c.embed(paths)
        sync_codes = c.tokenize(paths)
    for a, s in zip(embedded, sync, strict=True):
        np.testing.assert_array_equal(a.embedding, s.embedding)
        np.testing.assert_array_equal(a.start, s.start)
    for a, s in zip(codes, sync_codes, strict=True):
        np.testing.assert_array_equal(a.codes, s.codes)
    assert isinstance(failed[0], Embedding) and isinstance(failed[1], ClientError)


@pytest.fixture
def one_slot() -> Iterator[Server]:
    """A server that takes one request at a time and asks to retry after 1 s."""
    yield from run_server(DIGIT_MODELS, max_concurrent_requests=1, retry_after_s=1)


def hold_the_slot(server: Server, data: bytes, release: threading.Event) -> threading.Thread:
    """A request that holds the only slot (its body half sent) until `release` is set."""

    def body() -> Iterator[bytes]:
        yield data[:100]
        release.wait(30)
        yield data[100:]

    def post() -> None:
        httpx.post(f"{server.url}/embed", content=body(), headers={"content-type": "audio/flac"}, timeout=30)

    holder = threading.Thread(target=post)
    holder.start()
    deadline = time.monotonic() + 10
    while "bridle_in_flight 1.0" not in server.client.get("/metrics").text:
        assert time.monotonic() < deadline, "the holding request never was in flight"
        time.sleep(0.02)
    return holder


def test_a_503_is_retried_after_its_retry_after(one_slot: Server, files) -> None:
    """The client's request is refused with 503 overloaded and Retry-After: 1, waits that second, and
    is served once the slot is free; without retries the 503 is the answer."""
    data = files["tone.flac"].read_bytes()
    release = threading.Event()
    holder = hold_the_slot(one_slot, data, release)
    threading.Timer(0.5, release.set).start()  # frees the slot while the client waits
    started = time.monotonic()
    with Client(one_slot.url, retries=3) as c:
        e = c.embed(files["tone.flac"])
    waited = time.monotonic() - started
    holder.join()
    assert isinstance(e, Embedding)
    assert waited >= 1.0  # the Retry-After, not an immediate retry
    refused = re.search(
        r'bridle_refused_total\{cause="overloaded"\} (\S+)', one_slot.client.get("/metrics").text
    )
    assert refused is not None and float(refused.group(1)) >= 1  # refused, then served on a retry

    release.clear()
    holder = hold_the_slot(one_slot, data, release)
    with Client(one_slot.url, retries=0) as c, pytest.raises(ClientError) as err:
        c.embed(files["tone.flac"])
    release.set()
    holder.join()
    assert (err.value.status, err.value.code) == (503, "overloaded")


@pytest.fixture
def two_slots() -> Iterator[Server]:
    yield from run_server(DIGIT_MODELS, max_concurrent_requests=2, max_batch_size=4)


def test_concurrency_is_bounded(two_slots: Server, files) -> None:
    """With as many requests in flight as the server admits and no retries, nothing is refused: the
    client never had more than `concurrency` out at once (one more would be a 503)."""
    paths = [files[n] for n in ("speech.wav", "tone.flac", "noise.mp3", "clip.mp4")] * 4
    with Client(two_slots.url, concurrency=2, retries=0) as c:
        assert len(c.embed(paths)) == 16
    with Client(two_slots.url, concurrency=8, retries=0) as c, pytest.raises(ClientError) as e:
        c.embed(paths)  # more than the server admits: some are refused, and without retries that is the end
    assert e.value.code == "overloaded"


# ---- bridle-client embed FILES --out x.parquet -------------------------------------------------------------


def batch_windows(paths: list[Path], model: str, tmp: Path) -> pq.ParquetFile:
    """The batch job's windows table of `paths` (one shard through bridle-batch's own processor)."""
    chooser = ProviderChooser(["CPUExecutionProvider"])
    models = {model: load_model(MODELS / model, chooser, CpuThreads(intra_op=1))}
    processor = ShardProcessor(models, str(tmp / "batch"), DEFAULT_LIMITS, batch_size=4, top_k=5)
    summary = processor.process(0, [str(p) for p in paths])
    assert summary["errors"] == 0, summary
    return pq.read_table(tmp / "batch" / "windows" / model / "part-00000.parquet")


@pytest.mark.parametrize(
    ("names", "model"),
    [
        (["speech.wav", "tone.flac", "noise.mp3"], "audio-digits"),
        (["digit.png", "photo.jpeg"], "image-digits"),
    ],
)
def test_the_command_writes_the_batch_jobs_table(
    server: Server, files, tmp_path: Path, names: list[str], model: str, capsys
) -> None:
    paths = [files[n] for n in names]
    out = tmp_path / "x.parquet"
    status = main(["embed", *map(str, paths), "--out", str(out), "--url", server.url, "--api-key", KEY])
    assert status == 0, capsys.readouterr().err
    got = pq.read_table(out)
    expected = batch_windows(paths, model, tmp_path)
    assert got.schema.equals(expected.schema, check_metadata=True), f"{got.schema}\n---\n{expected.schema}"
    a, b = got.to_pydict(), expected.to_pydict()
    for column in ("path", "window", "start", "end", "duration", "codes", "labels"):
        assert a[column] == b[column], column
    np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-5)
    assert json.loads(got.schema.metadata[b"bridle"])["model"] == model
    assert f"{len(paths)} of {len(paths)} files" in capsys.readouterr().err


def test_the_command_on_a_folder_with_a_broken_file(server: Server, files, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("speech.wav", "tone.flac", "broken.wav"):
        (folder / name).write_bytes(files[name].read_bytes())
    (folder / ".hidden.wav").write_bytes(files["tone.flac"].read_bytes())
    out = tmp_path / "x.parquet"
    status = main(["embed", str(folder), "-o", str(out), "--url", server.url, "--api-key", KEY])
    err = capsys.readouterr().err
    assert status == 1 and "broken.wav: 422 corrupt" in err and "2 of 3 files" in err
    assert sorted(set(pq.read_table(out).column("path").to_pylist())) == [
        str(folder / "speech.wav"),
        str(folder / "tone.flac"),
    ]


def test_the_commands_refusals(server: Server, files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.parquet"
    url = ["--url", server.url, "--api-key", KEY]
    mixed = ["embed", str(files["speech.wav"]), str(files["digit.png"]), "-o", str(out), *url]
    assert main(mixed) == 2 and "2 models (audio-digits, image-digits)" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "missing.wav"), "-o", str(out), *url]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["embed", str(files["speech.wav"]), "-o", str(tmp_path / "no" / "x.parquet"), *url]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["embed", str(files["speech.wav"]), "-o", str(out), *url, "--model", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(["embed", str(files["speech.wav"]), "-o", str(out), "--url", server.url]) == 2
    assert "401 unauthorized" in capsys.readouterr().err
    closed = [
        "embed",
        str(files["speech.wav"]),
        "-o",
        str(out),
        "--url",
        "http://127.0.0.1:9",
        "--retries",
        "0",
    ]
    assert main(closed) == 2 and "cannot reach the service" in capsys.readouterr().err
    assert main(["embed", str(files["broken.wav"]), "-o", str(out), *url]) == 1
    assert "not written" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["embed", str(files["speech.wav"])])  # --out missing: argparse's usage error
    assert e.value.code == 2
