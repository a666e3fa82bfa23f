"""The refusal's head scan (bridle/service/protocol.py): which requests it may answer without the parser, and
where each one ends. What it declines goes to the parser, so a wrong None costs speed, a wrong answer
costs correctness: the cases below are the ones where a scan could be fooled. Last, how the refusals it
counts reach the metrics."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn

from bridle.service.middleware import AdmissionState
from bridle.service.protocol import PlainRequest, plain_request
from bridle.service.server import DrainingServer

ROUTES = frozenset({b"/embed", b"/tokenize", b"/classify", b"/features"})  # the admitted paths, as bytes


def request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + body


def test_a_plain_post_is_found_with_its_size() -> None:
    data = request("POST /embed HTTP/1.1\nHost: x\nContent-Type: audio/wav\nContent-Length: 5\n\n", b"hello")
    assert plain_request(data, ROUTES) == PlainRequest(
        "/embed", len(data), asks_close=False, content_length=5
    )
    # what follows in the chunk (a pipelined request) is not counted in this one
    assert plain_request(data + b"POST /embed HTTP/1.1\r\n", ROUTES).size == len(data)


def test_the_body_may_arrive_later() -> None:
    head = request("POST /tokenize?encoding=base64 HTTP/1.1\nContent-Length: 1000\n\n")
    found = plain_request(head + b"x" * 10, ROUTES)
    assert found == PlainRequest("/tokenize", len(head) + 1000, asks_close=False, content_length=1000)


@pytest.mark.parametrize(
    ("headers", "asks_close", "length"),
    [
        ("Connection: close\nContent-Length: 3", True, 3),
        ("CONNECTION: Close\ncontent-length:3", True, 3),
        ("Connection: keep-alive\nContent-Length: 3", False, 3),
        ("Host: closed.example", False, 0),  # "close" in another header's value
        ("Content-Length:   7  ", False, 7),
    ],
)
def test_header_names_are_case_blind_and_values_trimmed(headers: str, asks_close: bool, length: int) -> None:
    found = plain_request(request(f"POST /classify HTTP/1.1\n{headers}\n\n"), ROUTES)
    assert found is not None
    assert (found.asks_close, found.content_length) == (asks_close, length)


@pytest.mark.parametrize(
    "data",
    [
        b"POST /embed HTTP/1.1\r\nContent-Length: 5\r\n",  # the head is not all here
        request("POST /embed HTTP/1.1\nTransfer-Encoding: chunked\n\n"),  # only the parser finds the end
        request("POST /embed HTTP/1.1\nContent-Length: 5\nExpect: 100-continue\n\n"),
        request("GET /embed HTTP/1.1\nUpgrade: websocket\nConnection: Upgrade\n\n"),
        request("POST /embed HTTP/1.1\nContent-Length: 5\nContent-Length: 6\n\n"),  # smuggling
        request("POST /embed HTTP/1.1\nContent-Length: -5\n\n"),
        request("POST /embed HTTP/1.1\nContent-Length: 0x10\n\n"),
        request("POST /embed HTTP/1.0\nContent-Length: 5\n\n"),  # 1.0 closes by default
        request("POST  /embed HTTP/1.1\nContent-Length: 5\n\n"),
        request("POST /ready HTTP/1.1\nContent-Length: 5\n\n"),  # not an admitted route
        request("POST /embed%2F HTTP/1.1\nContent-Length: 5\n\n"),
        request("POST /embedding HTTP/1.1\nContent-Length: 5\n\n"),
    ],
)
def test_what_only_the_parser_can_read_is_left_to_it(data: bytes) -> None:
    assert plain_request(data, ROUTES) is None


def test_the_server_tick_publishes_the_refusals_counted_in_the_protocol() -> None:
    """The protocol counts its refusals in plain ints (bridle/service/middleware.py's `early_refusals`); every
    front end's server hands them to the metrics on its 0.1 s tick, each one once."""
    published: list[tuple[str, int]] = []
    admission = AdmissionState(1, 1, on_refused_early=lambda route, count: published.append((route, count)))
    admission.early_refusals["/embed"] += 3
    admission.early_refusals["/tokenize"] += 1
    server = DrainingServer(uvicorn.Config(app=None), admission, drain_timeout_s=1)
    asyncio.run(server.on_tick(0))
    assert sorted(published) == [("/embed", 3), ("/tokenize", 1)]
    asyncio.run(server.on_tick(1))  # nothing new
    assert len(published) == 2
    admission.early_refusals["/embed"] += 1
    asyncio.run(server.on_tick(2))
    assert published[-1] == ("/embed", 1)
