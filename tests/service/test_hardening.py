"""Hostile and unlucky clients: damaged media never gives a 5xx, overload is refused at once, unexpected
failures are JSON 500s with a request id, and SIGTERM drains. Real servers, real media, real ORT."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from conftest import Server, run_server

from bench.fuzz import FORMATS, cases, check_answer, post, seed_files
from bench.serve import free_port
from bridle.data.media_files import make_audio, make_video

REPO = Path(__file__).resolve().parents[2]
FUZZ_CASES = 270  # 30 per format


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server([model_root], max_batch_size=2, queue_size=8, max_concurrent_requests=4)


# ---- damaged media ---------------------------------------------------------------------------------


def test_damaged_media_is_answered_2xx_or_4xx_json(server: Server) -> None:
    files = seed_files()
    answers: dict[str, int] = {}
    for case in cases(FUZZ_CASES, seed=1, files=files):
        key = check_answer(post(server.client, case))  # raises on a 5xx or a non-JSON error
        answers[key] = answers.get(key, 0) + 1
    assert sum(answers.values()) == FUZZ_CASES
    # the damage must leave some files readable and break others, or the fuzzer tests nothing
    assert answers.get("200", 0) > FUZZ_CASES // 20 and answers.get("422 corrupt", 0) > FUZZ_CASES // 4
    assert set(FORMATS) == {"wav", "flac", "mp3", "ogg", "png", "jpeg", "webp", "mp4", "webm"}


def id3_tagged(mp3: bytes, title: bytes) -> bytes:
    """`mp3` behind an ID3v2.4 tag whose TIT2 frame claims UTF-8 and holds `title` as it is."""

    def syncsafe(n: int) -> bytes:
        return bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])

    body = b"\x03" + title  # text encoding 3: UTF-8
    frame = b"TIT2" + syncsafe(len(body)) + b"\0\0" + body
    return b"ID3\x04\x00\x00" + syncsafe(len(frame)) + frame + mp3


def without_id3(mp3: bytes) -> bytes:
    """The MPEG frames of an mp3 file, without its leading ID3v2 tag."""
    if mp3[:3] != b"ID3":
        return mp3
    size = (mp3[6] << 21) | (mp3[7] << 14) | (mp3[8] << 7) | mp3[9]
    return mp3[10 + size :]


def test_metadata_that_is_not_utf8_does_not_stop_decoding(server: Server) -> None:
    data = id3_tagged(make_audio("mp3", 0.5), b"caf\xe9 \xff\xfe")  # latin-1 bytes where UTF-8 is claimed
    r = server.client.post("/embed", files={"file": ("tagged.mp3", data, "audio/mpeg")})
    assert r.status_code == 200, r.text


def test_concatenated_mp3s_of_different_formats_decode_whole(server: Server) -> None:
    first = make_audio("mp3", 0.5, 16_000)
    second = without_id3(make_audio("mp3", 0.5, 22_050, channels=2))  # the rate and layout change
    r = server.client.post("/embed", files={"file": ("joined.mp3", first + second, "audio/mpeg")})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert result["duration"] == pytest.approx(1.0, abs=0.15)  # both halves, with the encoders' padding


@pytest.mark.parametrize(
    ("fmt", "codec", "unknown"), [("mp4", b"avc1", b"zzzz"), ("webm", b"V_VP8", b"V_ZZZ")]
)
def test_a_video_stream_with_no_decoder_is_422(
    server: Server, fmt: str, codec: bytes, unknown: bytes
) -> None:
    data = make_video(fmt, 0.5).replace(codec, unknown)  # PyAV gives such a stream no codec context
    r = server.client.post("/embed", files={"file": (f"x.{fmt}", data, f"video/{fmt}")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "corrupt", r.text


def slow_video(seconds_per_frame: int, frames: int = 2) -> bytes:
    """A valid h264 mp4 whose frames are `seconds_per_frame` apart: short to send, long to play."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(1, seconds_per_frame))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            rgb = np.full((32, 32, 3), 100, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def test_more_windows_than_the_queue_holds_is_413_not_503(server: Server) -> None:
    # 100 s of micro-video is 100 one-second windows; the queue holds 8 parts of 2
    r = server.client.post("/embed", files={"file": ("long.mp4", slow_video(50), "video/mp4")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_windows", r.text


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (RuntimeError("something PyAV did not expect"), "RuntimeError"),
        # an FFmpeg error that is also a PermissionError (a damaged mp4 gave it from a decoder)
        (av.error.PermissionError(1, "Operation not permitted", "avcodec_send_packet()"), "not permitted"),
    ],
)
def test_a_bare_decoder_error_is_422_corrupt(server: Server, media_files, monkeypatch, error, said) -> None:
    def broken_open(*args, **kwargs):
        raise error

    monkeypatch.setattr("bridle.model.decoding.av.open", broken_open)
    data, ctype = media_files["mp3"]
    r = server.client.post("/embed", files={"file": ("x.mp3", data, ctype)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "corrupt", r.text
    assert said in r.json()["error"]["message"]


# ---- unexpected failures -----------------------------------------------------------------------------


def test_an_unexpected_exception_is_a_json_500_with_the_request_id(
    server: Server, media_files, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    def bug(*args, **kwargs):
        raise TypeError("a bug in the service")

    monkeypatch.setattr("bridle.service.infer.to_windows", bug)
    data, ctype = media_files["wav"]
    with caplog.at_level(logging.ERROR, logger="bridle.service"):
        mine = server.client.post(
            "/embed", content=data, headers={"content-type": ctype, "X-Request-ID": "abc-1"}
        )
        theirs = server.client.post("/embed", content=data, headers={"content-type": ctype})
    for r in (mine, theirs):
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal", r.text
        request_id = r.headers["x-request-id"]
        assert request_id in r.json()["error"]["message"]
        logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
        assert logged and logged[0].exc_info is not None and "a bug in the service" in logged[0].exc_text
    assert mine.headers["x-request-id"] == "abc-1" and theirs.headers["x-request-id"] != "abc-1"


def test_every_answer_carries_a_request_id_and_odd_ones_are_replaced(server: Server) -> None:
    assert server.client.get("/health").headers["x-request-id"]
    r = server.client.get("/health", headers={"X-Request-ID": "not ok\t" + "x" * 300})
    assert r.headers["x-request-id"] != "not ok\t" + "x" * 300 and len(r.headers["x-request-id"]) == 32


# ---- overload ---------------------------------------------------------------------------------------


def slow_body(data: bytes, release: threading.Event) -> Iterator[bytes]:
    """`data` sent in two parts, the second only after `release` is set: a request held in flight."""
    yield data[: len(data) // 2]
    release.wait(30)
    yield data[len(data) // 2 :]


def test_past_the_in_flight_bound_requests_are_refused_at_once(server: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    release = threading.Event()

    def held(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/embed", content=slow_body(data, release), headers={"content-type": ctype})

    with ThreadPoolExecutor(4) as pool:
        holding = [pool.submit(held, i) for i in range(4)]  # 4 = max_concurrent_requests, reading bodies
        deadline = time.monotonic() + 10
        while server.client.get("/metrics").text.count("bridle_in_flight 4.0") == 0:
            assert time.monotonic() < deadline, "the held requests never were in flight"
            time.sleep(0.02)
        refused = server.client.post("/embed", content=data, headers={"content-type": ctype})
        release.set()
        served = [f.result() for f in holding]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded", refused.text
    assert refused.headers["retry-after"]
    assert [r.status_code for r in served] == [200] * 4
    after = server.client.post("/embed", content=data, headers={"content-type": ctype})
    assert after.status_code == 200, after.text


def test_as_many_clients_as_the_bound_are_never_refused(server: Server, media_files) -> None:
    data, ctype = media_files["wav"]

    def client(_: int) -> list[int]:  # back to back: the next request leaves as the answer arrives
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return [
                c.post("/embed", content=data, headers={"content-type": ctype}).status_code for _ in range(20)
            ]

    with ThreadPoolExecutor(4) as pool:  # 4 = max_concurrent_requests
        statuses = [s for batch in pool.map(client, range(4)) for s in batch]
    assert statuses == [200] * 80, statuses


def test_far_more_clients_than_capacity_get_2xx_or_503_and_none_hangs(server: Server, media_files) -> None:
    data, ctype = media_files["wav"]

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/embed", content=data, headers={"content-type": ctype})
            assert r.status_code == 200 or r.json()["error"]["code"] == "overloaded", r.text
            return r.status_code

    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(one, range(240)))
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0, statuses


# ---- SIGTERM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("frontends", [0, 2])
def test_sigterm_finishes_in_flight_refuses_new_work_and_exits_0(
    model_root: Path, media_files, frontends: int
) -> None:
    """In one process, and with 2 front-end processes over an engine process (which then leave no
    shared memory behind). Each request on a new connection: either front end may answer it."""
    port = free_port()
    env = {**os.environ, "BRIDLE_PROVIDERS": "CPUExecutionProvider", "BRIDLE_DRAIN_TIMEOUT_S": "20"}
    env["BRIDLE_FRONTENDS"] = str(frontends)
    cmd = [
        sys.executable,
        "-m",
        "bridle.service.cli",
        "--model-dir",
        str(model_root / "audio"),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    data, ctype = media_files["wav"]
    release = threading.Event()
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 90 s"
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                lambda: httpx.post(
                    f"{url}/embed",
                    content=slow_body(data, release),
                    headers={"content-type": ctype},
                    timeout=30,
                )
            )
            while "bridle_in_flight 1.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline + 30, "the held request never was in flight"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert proc.poll() is None, "the server stopped before its request in flight was done"
            refused = httpx.post(f"{url}/embed", content=data, headers={"content-type": ctype})
            ready = httpx.get(f"{url}/ready")
            release.set()
            finished = in_flight.result()
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert finished.status_code == 200, finished.text
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down", refused.text
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"bridle-{proc.pid}-")]
