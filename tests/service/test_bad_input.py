"""Every kind of bad request gets a JSON error with the documented status and never a 500 or a hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, run_server

from bridle.data.media_files import make_video

MAX_UPLOAD = 300_000


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server(
        [model_root],
        max_upload_bytes=MAX_UPLOAD,
        max_audio_seconds=3.0,
        max_image_pixels=100_000,
        max_video_seconds=10,
    )


def error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


def test_empty_bodies(server: Server) -> None:
    error(server.client.post("/embed", content=b"", headers={"content-type": "audio/wav"}), 400, "empty")
    error(server.client.post("/embed", files={"other": ("x.txt", b"hello", "text/plain")}), 400, "empty")


def test_truncated_and_corrupt_files(server: Server, media_files) -> None:
    # cut where no decoder can recover: in the wav header, the png/jpeg data, the mp4 before its index
    for fmt, keep in (("wav", 20), ("png", 1 / 3), ("jpeg", 1 / 3), ("mp4", 1 / 3), ("webm", 1 / 4)):
        data, ctype = media_files[fmt]
        cut = data[: keep if isinstance(keep, int) else int(len(data) * keep)]
        r = server.client.post("/embed", files={"file": (f"bad.{fmt}", cut, ctype)})
        assert r.status_code == 422 and r.json()["error"]["code"] == "corrupt", (fmt, r.text)
        assert f"bad.{fmt}" in r.json()["error"]["message"]


def test_not_media_is_415(server: Server) -> None:
    r = server.client.post(
        "/embed", content=b"just some text, not media" * 10, headers={"content-type": "text/plain"}
    )
    error(r, 415, "unsupported")


def test_body_over_the_limit_by_content_length_and_while_streaming(server: Server) -> None:
    big = b"\0" * (MAX_UPLOAD + 1)
    error(server.client.post("/embed", content=big, headers={"content-type": "audio/wav"}), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(20):
            yield b"\0" * 65536

    r = server.client.post("/embed", content=chunks(), headers={"content-type": "audio/wav"})
    error(r, 413, "too_large")
    files = [("file", (f"{i}.bin", b"\0" * 120_000, "audio/wav")) for i in range(3)]
    error(server.client.post("/embed", files=files), 413, "too_large")


def test_audio_over_the_duration_limit(server: Server, audio_of_seconds) -> None:
    data, ctype = audio_of_seconds(4.0)
    error(server.client.post("/embed", files={"file": ("long.wav", data, ctype)}), 413, "too_long")


def test_image_over_the_pixel_limit(server: Server, big_image) -> None:
    data, ctype = big_image  # 400 x 400 = 160 000 pixels > 100 000
    error(server.client.post("/embed", files={"file": ("big.png", data, ctype)}), 413, "too_large")


def test_video_frames_over_the_pixel_limit(server: Server) -> None:
    data = make_video("mp4", 0.3, size=(400, 300))  # 120 000 pixels a frame > 100 000
    error(server.client.post("/embed", files={"file": ("big.mp4", data, "video/mp4")}), 413, "too_large")


def test_video_without_frames(server: Server, frameless_video) -> None:
    data, ctype = frameless_video
    r = server.client.post(
        "/embed", files={"file": ("empty.mp4", data, ctype)}, params={"model": "micro-video"}
    )
    error(r, 422, "no_frames")


def test_invalid_parameters_and_unknown_routes(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    f = {"file": ("a.png", data, ctype)}
    msg = error(server.client.post("/classify", files=f, params={"top_k": 0}), 422, "invalid_parameter")
    assert "top_k" in msg
    error(server.client.post("/embed", files=f, params={"pooling": "max"}), 422, "invalid_parameter")
    error(server.client.get("/nowhere"), 404, "not_found")
    error(server.client.get("/embed"), 405, "method_not_allowed")


def test_metrics_count_what_happened(server: Server, media_files) -> None:
    data, ctype = media_files["png"]
    for _ in range(3):
        assert server.client.post("/embed", files={"file": ("a.png", data, ctype)}).status_code == 200
    server.client.post("/embed", content=b"", headers={"content-type": "image/png"})
    text = server.client.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['bridle_requests_total{route="/embed",status="200"}']) >= 3
    assert float(lines['bridle_requests_total{route="/embed",status="400"}']) >= 1
    assert float(lines['bridle_batch_size_count{graph="encoder",model="micro-image"}']) >= 1
    assert float(lines['bridle_request_latency_seconds_count{route="/embed"}']) >= 4
    assert 'bridle_queue_depth{graph="encoder",model="micro-image"}' in lines
