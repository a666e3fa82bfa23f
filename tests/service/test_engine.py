"""The engine's admission and outputs over a real server: a refusal reads and decodes nothing, a client
that leaves is dropped before the engine, base64 arrays are the JSON numbers, and concurrent runs share
one ONNX Runtime session per graph. Real uvicorn, real media, real ORT sessions."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import Server, run_server

from bridle.runtime.batcher import Batcher, BatchSpec
from bridle.runtime.models import load_model
from bridle.runtime.sessions import CpuThreads, ProviderChooser

HELD_S = 2.5  # a lone request waits this long for its batch to fill: it stays in flight meanwhile


@pytest.fixture(scope="module", params=["bridle", "h11"])
def slow_server(model_root: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """One request in flight at most; a lone request waits HELD_S in the queue for company. HTTP parsed
    as bridle-serve does (the refusals answered in the protocol), and by h11 (by the middleware)."""
    yield from run_server(
        [model_root],
        http=None if request.param == "bridle" else request.param,
        max_concurrent_requests=1,
        max_batch_size=16,
        max_wait_ms=HELD_S * 1000,
    )


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server([model_root])


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when it has not been observed yet)."""
    text = server.client.get("/metrics").text
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(2))
    return 0.0


def wait_for(condition, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_refusal_reads_and_decodes_nothing(slow_server: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    s = slow_server
    read, decoded = metric(s, "bridle_bodies_read_total"), metric(s, "bridle_decodes_total")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 1, "the held request's decode")
        refused = [s.client.post("/embed", content=data, headers={"content-type": ctype}) for _ in range(20)]
        served = held.result()
    assert served.status_code == 200, served.text
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {(503, "overloaded")}
    assert all(r.headers["retry-after"] == "1" for r in refused)
    # a small body keeps the connection: the refused ones need no reconnect
    assert all("connection" not in r.headers for r in refused)
    # the refusals are prepared once and sent again and again: each carries its own single request id
    # (the id once went into the shared message itself, so every refusal grew by one header)
    assert all(len(r.headers.get_list("x-request-id")) == 1 for r in refused)
    assert len({r.headers["x-request-id"] for r in refused}) == len(refused)
    assert len({len(r.headers.raw) for r in refused}) == 1
    assert metric(s, "bridle_bodies_read_total") == read + 1
    assert metric(s, "bridle_decodes_total") == decoded + 1
    assert metric(s, "bridle_refused_total", cause="overloaded") >= 20
    assert metric(s, "bridle_requests_total", route="/embed", status="503") >= 20


def read_response(sock_file) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a socket's file: status, headers (lower-case names), body."""
    status = int(sock_file.readline()[9:12])
    headers: dict[str, str] = {}
    while (line := sock_file.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, sock_file.read(int(headers.get("content-length", 0)))


def test_a_refused_body_is_skipped_on_a_kept_connection(slow_server: Server, media_files) -> None:
    """Refusals pipelined on one connection are answered in order, their bodies skipped, so the same
    connection carries a served request once the slot is free; an oversized body's refusal closes it."""
    data, ctype = media_files["wav"]
    s = slow_server
    host, port = s.url.removeprefix("http://").split(":")
    head = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n"
    request = head.format(ctype, len(data)).encode() + data
    decoded = metric(s, "bridle_decodes_total")
    with ThreadPoolExecutor(1) as pool, socket.create_connection((host, int(port))) as sock:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 1, "the held request's decode")
        answers = sock.makefile("rb")
        sock.sendall(request * 3)  # pipelined
        for _ in range(3):
            status, headers, body = read_response(answers)
            assert (status, json.loads(body)["error"]["code"]) == (503, "overloaded")
            assert "connection" not in headers and headers["retry-after"] == "1"
        assert held.result().status_code == 200
        sock.sendall(request)  # the parser is still in step: the next request on it is served
        status, _, body = read_response(answers)
        assert status == 200, body
        assert len(json.loads(body)["results"][0]["embedding"]) > 0
    big = b"\0" * (300 * 1024)  # above the 256 KiB kept: the refusal closes the connection
    with ThreadPoolExecutor(1) as pool, socket.create_connection((host, int(port))) as sock:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 3, "the second held decode")
        answers = sock.makefile("rb")
        sock.sendall(head.format(ctype, len(big)).encode())
        status, headers, _ = read_response(answers)
        assert (status, headers["connection"]) == (503, "close")
        assert answers.read() == b""  # closed by the server
        assert held.result().status_code == 200


def test_refusals_keep_the_connection_in_step_however_the_bytes_arrive(
    slow_server: Server, media_files
) -> None:
    """At the bound, requests arriving in pieces (a head cut in two, a body cut in two, a query string,
    a chunked body) are all refused, each exactly once, and the connection stays in step: after them,
    the same connection is served."""
    data, ctype = media_files["wav"]
    s = slow_server
    host, port = s.url.removeprefix("http://").split(":")
    head = f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
    request = head.encode() + data
    chunked = (
        f"POST /embed?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{len(data):x}\r\n".encode()
        + data
        + b"\r\n0\r\n\r\n"
    )
    pieces = [
        [request[:20], request[20:]],  # the head in two
        [request[: len(head) + 100], request[len(head) + 100 :]],  # the body in two
        [request[: len(head)], request[len(head) :] + request],  # the head alone, then a body and the next
    ]
    decoded = metric(s, "bridle_decodes_total")
    with ThreadPoolExecutor(1) as pool, socket.create_connection((host, int(port))) as sock:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 1, "the held request's decode")
        answers = sock.makefile("rb")
        for parts in pieces:
            for part in parts:
                sock.sendall(part)
                time.sleep(0.05)  # its own packet
        for _ in range(4):
            status, headers, body = read_response(answers)
            assert (status, json.loads(body)["error"]["code"]) == (503, "overloaded")
            assert "connection" not in headers
        assert held.result().status_code == 200
        sock.sendall(request)
        status, _, body = read_response(answers)
        assert status == 200, body
    with ThreadPoolExecutor(1) as pool, socket.create_connection((host, int(port))) as sock:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 3, "the second held decode")
        sock.sendall(chunked)  # an unsized body: refused, and the connection closed
        answers = sock.makefile("rb")
        status, headers, _ = read_response(answers)
        assert (status, headers["connection"]) == (503, "close")
        assert held.result().status_code == 200


KEEP_ALIVE_S = 1.0


@pytest.fixture(scope="module")
def brief_keep_alive_server(model_root: Path) -> Iterator[Server]:
    """As `slow_server` (the refusals answered in the protocol), closing a connection idle for
    KEEP_ALIVE_S."""
    yield from run_server(
        [model_root],
        keep_alive_s=KEEP_ALIVE_S,
        max_concurrent_requests=1,
        max_batch_size=16,
        max_wait_ms=HELD_S * 1000,
    )


def test_refusals_keep_a_connection_alive_and_an_idle_one_is_closed(
    brief_keep_alive_server: Server, media_files
) -> None:
    """The protocol's refusals leave uvicorn's keep-alive timer armed rather than re-arming it for each
    one: a connection refused again and again for longer than the keep-alive time stays open, and one
    left idle after its refusal is closed once that time has passed."""
    data, ctype = media_files["wav"]
    s = brief_keep_alive_server
    host, port = s.url.removeprefix("http://").split(":")
    request = (
        f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    decoded = metric(s, "bridle_decodes_total")
    with ThreadPoolExecutor(1) as pool, socket.create_connection((host, int(port))) as sock:
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 1, "the held request's decode")
        answers = sock.makefile("rb")
        refused_until = time.monotonic() + 1.6 * KEEP_ALIVE_S  # within the held request's HELD_S
        while time.monotonic() < refused_until:
            sock.sendall(request)
            status, headers, _ = read_response(answers)
            assert (status, headers.get("connection")) == (503, None)
            idle_from = time.monotonic()
            time.sleep(0.2 * KEEP_ALIVE_S)
        sock.settimeout(5 * KEEP_ALIVE_S)
        assert answers.read() == b""  # closed by the server, once idle long enough
        assert KEEP_ALIVE_S * 0.9 <= time.monotonic() - idle_from < 3 * KEEP_ALIVE_S
        assert held.result().status_code == 200


def test_a_client_that_leaves_is_dropped_before_the_engine(slow_server: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    s = slow_server
    runs = lambda: metric(s, "bridle_batch_size_count", model="micro-audio", graph="encoder")  # noqa: E731
    before, dropped = runs(), metric(s, "bridle_refused_total", cause="disconnected")
    host, port = s.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        wait_for(lambda: metric(s, "bridle_queue_depth", model="micro-audio", graph="encoder") == 1, "queued")
    # gone while it waits for its batch: out of the queue and its slot free at once, long before HELD_S
    wait_for(lambda: metric(s, "bridle_in_flight") == 0, "the slot freed", seconds=HELD_S / 2)
    assert metric(s, "bridle_queue_depth", model="micro-audio", graph="encoder") == 0
    assert metric(s, "bridle_refused_total", cause="disconnected") == dropped + 1
    time.sleep(HELD_S)
    assert runs() == before  # the engine never ran it
    ok = s.client.post("/embed", content=data, headers={"content-type": ctype})
    assert ok.status_code == 200 and runs() == before + 1
    assert metric(s, "bridle_requests_total", route="/embed", status="499") >= 1


def test_a_client_that_leaves_mid_upload_is_a_disconnect_not_an_error(server: Server, media_files) -> None:
    """A client gone before its body is all here frees its slot and is counted as gone (499), not as a
    500 with a traceback."""
    data, ctype = media_files["wav"]
    s = server
    errors = metric(s, "bridle_requests_total", route="/embed", status="500")
    gone = metric(s, "bridle_requests_total", route="/embed", status="499")
    dropped = metric(s, "bridle_refused_total", cause="disconnected")
    host, port = s.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: len(data) // 2])
        wait_for(lambda: metric(s, "bridle_in_flight") == 1, "admitted")
    wait_for(lambda: metric(s, "bridle_in_flight") == 0, "the slot freed")
    wait_for(lambda: metric(s, "bridle_requests_total", route="/embed", status="499") == gone + 1, "a 499")
    assert metric(s, "bridle_refused_total", cause="disconnected") == dropped + 1
    assert metric(s, "bridle_requests_total", route="/embed", status="500") == errors


def decode_array(x: dict) -> np.ndarray:
    """docs/contracts.md's recipe for an `encoding=base64` array."""
    return np.frombuffer(base64.b64decode(x["data"]), dtype=np.dtype(x["dtype"]).newbyteorder("<")).reshape(
        x["shape"]
    )


def test_base64_arrays_are_the_json_numbers(server: Server, long_audio) -> None:
    data, ctype, _ = long_audio  # several windows
    post = lambda path, **q: server.client.post(  # noqa: E731
        path, params=q, content=data, headers={"content-type": ctype}
    ).json()["results"][0]
    as_json = post("/embed", pooling="tokens")
    as_b64 = post("/embed", pooling="tokens", encoding="base64")
    assert len(as_json["windows"]) == len(as_b64["windows"]) > 1
    for j, b in zip(as_json["windows"], as_b64["windows"], strict=True):
        patches = decode_array(b["patch_embeddings"])
        assert b["patch_embeddings"]["dtype"] == "float32" and patches.ndim == 2
        np.testing.assert_array_equal(patches, np.asarray(j["patch_embeddings"], np.float32))
        assert b["embedding"] == j["embedding"]  # the small vectors stay numbers
    codes_json, codes_b64 = post("/tokenize"), post("/tokenize", encoding="base64")
    for j, b in zip(codes_json["windows"], codes_b64["windows"], strict=True):
        assert b["codes"]["dtype"] == "int32"
        np.testing.assert_array_equal(decode_array(b["codes"]), np.asarray(j["codes"]))
    bad = server.client.post("/tokenize", params={"encoding": "hex"}, content=data)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"


class _RecordingSession:
    """Wraps one ORT session: which threads ran it, and a barrier that holds each run until two are
    inside at once (proof that the runs overlap on this one session)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.threads: set[str] = set()
        self.together = threading.Barrier(2, timeout=10)

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        self.threads.add(threading.current_thread().name)
        self.together.wait()
        return self.session.run(names, feeds)


def test_concurrent_runs_share_one_session_per_graph(model_root: Path, monkeypatch) -> None:
    made = []
    real = ort.InferenceSession.__init__

    def counting(self, *args, **kwargs) -> None:
        made.append(args[0])
        real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", counting)
    model = load_model(model_root / "audio", ProviderChooser(["CPUExecutionProvider"]), CpuThreads(1))
    one_per_graph = ["encoder.onnx", "features.onnx", "tokenizer.onnx"]
    assert sorted(Path(p).name for p in made) == one_per_graph

    recording = _RecordingSession(model.sessions["encoder"])
    signal = np.random.default_rng(0).normal(size=(4, *model.manifest.input.shape[1:])).astype(np.float32)
    expected = model.run("encoder", signal, ["embedding"])["embedding"]  # (4, D), one run alone
    model.sessions["encoder"] = recording  # type: ignore[assignment]

    async def two_at_once() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(
            "audio/encoder",
            lambda x, outputs: model.run("encoder", x, outputs),
            BatchSpec(max_batch_size=2, max_wait_s=0.0, queue_size=8, timeout_s=20, concurrent_runs=2),
        )
        batcher.start()
        try:
            return await asyncio.gather(batcher.submit(signal[:2], ["embedding"]), batcher.submit(signal[2:]))
        finally:
            await batcher.stop()

    first, second = asyncio.run(two_at_once())
    assert len(recording.threads) == 2  # two run threads, both inside the one session at once
    np.testing.assert_allclose(np.concatenate([first["embedding"], second["embedding"]]), expected, atol=1e-5)


def test_every_stage_is_timed_and_batches_report_their_fill(server: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    assert server.client.post("/embed", content=data, headers={"content-type": ctype}).status_code == 200
    for stage in ("read", "decode", "queue_wait", "run", "serialise"):
        assert metric(server, "bridle_stage_seconds_count", stage=stage) >= 1, stage
    assert metric(server, "bridle_batch_fill_count", model="micro-audio", graph="encoder") >= 1
