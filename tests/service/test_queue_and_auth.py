"""Back-pressure (full queue, timeout) and the API key, each on its own server profile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, Server, run_server

from bridle.service.app import create_app
from bridle.service.settings import Settings


@pytest.fixture(scope="module")
def tight(model_root: Path) -> Iterator[Server]:
    # 2 waiting requests at most; a batch waits 3 s to fill but a request only 1 s
    yield from run_server(
        [model_root / "audio"], queue_size=2, max_batch_size=64, max_wait_ms=3000, request_timeout_s=1.0
    )


@pytest.fixture(scope="module")
def keyed(model_root: Path) -> Iterator[Server]:
    yield from run_server([model_root / "audio"], api_key=API_KEY)


def test_full_queue_and_timeout_are_503(tight: Server, media_files) -> None:
    data, ctype = media_files["wav"]

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=tight.url, timeout=10) as c:
            return c.post("/embed", content=data, headers={"content-type": ctype})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    codes = sorted(r.json()["error"]["code"] for r in responses)
    assert all(r.status_code == 503 for r in responses)
    assert codes.count("timeout") == 2 and codes.count("queue_full") == 4, codes
    assert all(r.headers.get("retry-after") for r in responses)
    metrics = tight.client.get("/metrics").text
    assert 'bridle_rejected_total{graph="encoder",model="micro-audio",reason="queue_full"} 4.0' in metrics


def test_api_key(keyed: Server, media_files) -> None:
    data, ctype = media_files["wav"]
    c = keyed.client

    def embed(headers: dict[str, str]) -> httpx.Response:
        return c.post("/embed", content=data, headers={"content-type": ctype, **headers})

    assert embed({}).status_code == 401 and embed({}).json()["error"]["code"] == "unauthorized"
    assert embed({"X-API-Key": "wrong"}).status_code == 401
    assert embed({"Authorization": "Bearer wrong"}).status_code == 401
    assert embed({"X-API-Key": API_KEY}).status_code == 200
    assert embed({"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert c.get("/models").status_code == 401
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def test_not_ready_until_warmed_up(model_root: Path, media_files) -> None:
    """Before the lifespan has warmed the models (here: never started), /ready and inference say 503."""
    app = create_app(Settings(model_dirs=[model_root / "audio"]))
    data, ctype = media_files["wav"]

    async def ask() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (
                await c.get("/health"),
                await c.get("/ready"),
                await c.post("/embed", content=data, headers={"content-type": ctype}),
            )

    health, ready, embed = asyncio.run(ask())
    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    assert embed.status_code == 503 and embed.headers["retry-after"]
