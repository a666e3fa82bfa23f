"""Admission is declared on each route (bridle/service/routes/admission.py), and the in-flight bound covers
every route that reads an upload or runs a model: the app's routes are walked on a live server while one
request holds the only slot, so a route added without `@admitted` fails here whatever its name."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Server, run_server
from fastapi import APIRouter, FastAPI
from test_engine import metric, wait_for

from bridle.service.app import create_app
from bridle.service.middleware import AdmittedRoutes
from bridle.service.routes import ROUTERS
from bridle.service.routes.admission import (
    UndeclaredAdmission,
    admitted,
    admitted_routes,
    framework_paths,
    not_admitted,
    walk_routes,
)
from bridle.service.settings import Settings

HELD_S = 10.0  # the held request waits this long for its batch to fill: the walk runs meanwhile
MEDIA_ROUTES = {"/embed", "/tokenize", "/classify", "/features"}


def _app(model_root: Path) -> FastAPI:
    return create_app(Settings(model_dirs=[model_root]))


def test_every_route_declares_its_admission_and_the_media_routes_are_admitted(model_root: Path) -> None:
    app = _app(model_root)
    routes = list(walk_routes(app))
    undeclared = {r.path for r in routes if r.declaration is None}
    assert undeclared == framework_paths(app)  # FastAPI's own pages alone declare nothing
    assert all(r.declaration.reason for r in routes if r.declaration and not r.declaration.admitted)
    assert app.state.bridle.admission.routes.paths >= MEDIA_ROUTES
    assert {"/health", "/ready", "/metrics"}.isdisjoint(app.state.bridle.admission.routes.paths)


def test_a_route_without_a_declaration_stops_the_app(model_root: Path, monkeypatch) -> None:
    extra = APIRouter()

    @extra.post("/segment")
    async def segment() -> dict[str, str]:
        return {}

    monkeypatch.setattr("bridle.service.app.ROUTERS", (*ROUTERS, extra))
    with pytest.raises(UndeclaredAdmission, match=r"route POST /segment declares no admission"):
        _app(model_root)


def test_paths_with_parameters_are_matched_and_methods_must_agree() -> None:
    app = FastAPI()

    @app.post("/v9/{model}/embed")
    @admitted
    async def embed(model: str) -> None: ...

    @app.get("/v9/{model}")
    @not_admitted("a manifest")
    async def card(model: str) -> None: ...

    routes = admitted_routes(app)
    assert "/v9/audio/embed" in routes and "/v9/audio" not in routes and "/v9/a/b/embed" not in routes
    assert routes.raw == frozenset()  # the protocol's byte scan leaves parameterised paths to the parser

    @app.get("/v9/{model}/embed")
    @not_admitted("the same path, another method")
    async def embed_get(model: str) -> None: ...

    with pytest.raises(UndeclaredAdmission, match="disagree"):
        admitted_routes(app)
    with pytest.raises(ValueError):
        not_admitted(" ")


def test_admitted_routes_match_exact_paths_only() -> None:
    routes = AdmittedRoutes(frozenset({"/embed"}))
    assert "/embed" in routes and "/embed/" not in routes and "/embedx" not in routes
    assert routes.raw == frozenset({b"/embed"})


@pytest.fixture(scope="module", params=["bridle", "h11"])
def one_slot_server(model_root: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """One request in flight at most, and a lone request waits HELD_S for company; HTTP parsed as
    bridle-serve does (refusals in the protocol) and by h11 (refusals in the middleware)."""
    yield from run_server(
        [model_root],
        http=None if request.param == "bridle" else request.param,
        max_concurrent_requests=1,
        max_batch_size=16,
        max_wait_ms=HELD_S * 1000,
        timeout=HELD_S + 20,
    )


def _concrete(path: str, model: str) -> str:
    return re.sub(r"\{[^}]+\}", model, path)


def test_the_walk_at_the_bound_refuses_every_admitted_route_and_reads_nothing(
    one_slot_server: Server, model_root: Path, media_files
) -> None:
    """While one /embed holds the only slot, every route of the app is asked with a real wav: each
    admitted one answers 503 `overloaded`, each other one answers (a probe under load) without reading
    the body, and nothing is decoded."""
    s = one_slot_server
    data, ctype = media_files["wav"]
    routes = list(walk_routes(_app(model_root)))
    model = s.client.get("/models").json()["models"][0]["name"]
    with ThreadPoolExecutor(1) as pool:
        read, decoded = metric(s, "bridle_bodies_read_total"), metric(s, "bridle_decodes_total")
        held = pool.submit(s.client.post, "/embed", content=data, headers={"content-type": ctype})
        wait_for(lambda: metric(s, "bridle_decodes_total") == decoded + 1, "the held request's decode")
        started = time.monotonic()
        answers = {}
        for route in routes:
            for method in sorted(route.methods - {"HEAD"}):
                path = _concrete(route.path, model)
                r = s.client.request(method, path, content=data, headers={"content-type": ctype})
                answers[method, route.path] = (route.declaration, r)
        walked_s = time.monotonic() - started
        assert not held.done(), f"the walk took {walked_s:.1f} s: the held request left before its end"
        after_read, after_decoded = metric(s, "bridle_bodies_read_total"), metric(s, "bridle_decodes_total")
        assert held.result().status_code == 200
    assert {path for _, path in answers} >= MEDIA_ROUTES | {"/health", "/ready", "/metrics", "/models"}
    for (method, path), (declaration, r) in answers.items():
        if declaration is not None and declaration.admitted:
            assert r.status_code == 503, (method, path, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "overloaded", (method, path, r.text[:200])
        else:
            assert r.status_code < 500, (method, path, r.status_code, r.text[:200])
    assert (after_read, after_decoded) == (read + 1, decoded + 1), "a route read or decoded at the bound"
