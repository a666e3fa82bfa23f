"""Admission, declared on each route: whether the in-flight bound covers it.

Every route that reads an upload or runs a model is `@admitted`: past `BRIDLE_MAX_CONCURRENT_REQUESTS` in
flight it is refused at once with 503 `overloaded` (bridle/service/middleware.py's `Admission`, and the
protocol's early refusal, bridle/service/protocol.py), before its body is read. Every other route says why it
is not, with `@not_admitted("reason")`. The decorator goes on the endpoint, above or below the router's:

    @router.post("/v1/embeddings", ...)
    @admitted
    async def embeddings(request: Request, state: State) -> Response:
        uploads = await uploads_of(request)  # 500 if the route was not admitted (routes/deps.py)
        ...

`admitted_routes(app)` walks the app's routes (included routers too) and collects the admitted paths;
`create_app` calls it, and it raises `UndeclaredAdmission` for a route that declares neither, so a new
route cannot escape the bound by being forgotten. Only FastAPI's own pages (OpenAPI, docs) declare
nothing. `tests/service/test_admission.py` walks a live server's routes at the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from bridle.service.middleware import AdmittedRoutes

ATTRIBUTE = "__bridle_admission__"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True)
class Declaration:
    admitted: bool
    reason: str  # why not, for a route that is not admitted


class UndeclaredAdmission(RuntimeError):
    """A route that declares neither `@admitted` nor `@not_admitted(reason)`, or a path whose methods
    disagree."""


def admitted(endpoint: Endpoint) -> Endpoint:
    """The route reads uploads or runs a model: the in-flight bound covers it."""
    setattr(endpoint, ATTRIBUTE, Declaration(True, ""))
    return endpoint


def not_admitted(reason: str) -> Callable[[Endpoint], Endpoint]:
    """The route reads no upload and runs no model (`reason` says what it does instead): it answers
    beside the bound, under any load."""
    if not reason.strip():
        raise ValueError("say why the route needs no admission")

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, ATTRIBUTE, Declaration(False, reason))
        return endpoint

    return declare


def declaration_of(endpoint: Callable[..., Any] | None) -> Declaration | None:
    return getattr(endpoint, ATTRIBUTE, None)


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    declaration: Declaration | None  # None: FastAPI's own pages (OpenAPI, docs) only
    route: Any  # fastapi.routing.RouteContext: path_regex, param_convertors, endpoint


def framework_paths(app: FastAPI) -> frozenset[str]:
    """FastAPI's own pages: the OpenAPI schema and the docs (they read no body and run no model)."""
    return frozenset(
        p
        for p in (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
        if p is not None
    )


def walk_routes(app: FastAPI) -> Iterator[RouteInfo]:
    """Every HTTP route of `app`, included routers' too, with its declaration; raises
    `UndeclaredAdmission` for one without a declaration (other than FastAPI's own pages)."""
    own = framework_paths(app)
    for route in iter_route_contexts(app.routes):
        path, methods = route.path, frozenset(route.methods or ())
        declaration = declaration_of(route.endpoint)
        if declaration is None and path not in own:
            raise UndeclaredAdmission(
                f"route {'/'.join(sorted(methods)) or 'ANY'} {path} declares no admission: mark its endpoint"
                " @admitted (it reads uploads or runs a model) or @not_admitted('why not')"
                " (bridle/service/routes/admission.py)"
            )
        yield RouteInfo(path, methods, declaration, route)


def admitted_routes(app: FastAPI) -> AdmittedRoutes:
    """The admitted paths of `app`, as the middleware and the protocol match them."""
    by_path: dict[str, set[bool]] = {}
    patterns = {}
    for info in walk_routes(app):
        admits = info.declaration is not None and info.declaration.admitted
        by_path.setdefault(info.path, set()).add(admits)
        if admits and info.route.param_convertors:
            patterns[info.path] = info.route.path_regex
    mixed = sorted(path for path, kinds in by_path.items() if len(kinds) > 1)
    if mixed:
        raise UndeclaredAdmission(
            f"the methods of {', '.join(mixed)} disagree on admission: the bound covers a path, not one"
            " method of it"
        )
    plain = frozenset(p for p, kinds in by_path.items() if True in kinds and p not in patterns)
    return AdmittedRoutes(plain, tuple(patterns.values()))
