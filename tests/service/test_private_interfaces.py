"""The libraries' interfaces the service relies on that are not their public API. pyproject.toml bounds each
library to the releases checked here, and the lock (requirements/) pins one; when `make lock` moves past
one of them, this fails and names what changed and which of our files relies on it, instead of a refusal
path, a drain or an admission walk breaking in some other test (or in production) with nothing said.

- uvicorn's httptools protocol (bridle/service/protocol.py subclasses it and overrides `_start_asgi_task`,
  `data_received`, `timeout_keep_alive_handler`, and reads its connection state);
- uvicorn's `Server.on_tick` and `handle_exit` (bridle/service/server.py's DrainingServer);
- FastAPI's `iter_route_contexts` (bridle/service/routes/admission.py walks the included routers with it);
- prometheus_client's multiprocess file names `<kind>_<pid>.db` (bridle/service/engine_folders.py reads the
pids).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

httptools_impl = pytest.importorskip(
    "uvicorn.protocols.http.httptools_impl", reason="no httptools: bridle/service/protocol.py is not used"
)


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def _changed(what: str, ours: str) -> str:
    import uvicorn

    return (
        f"uvicorn {uvicorn.__version__} changed {what}, which {ours} relies on: check that file against "
        "this release before widening the bound on uvicorn in pyproject.toml (then `make lock`)"
    )


def test_uvicorn_starts_each_request_through_start_asgi_task() -> None:
    """bridle/service/protocol.py refuses a request at the bound in its `_start_asgi_task` override: uvicorn
    must call it for every request whose headers are parsed, and for a pipelined one after a response."""
    proto = httptools_impl.HttpToolsProtocol
    ours = "bridle/service/protocol.py's RefusingProtocol._start_asgi_task"
    assert hasattr(proto, "_start_asgi_task"), _changed("HttpToolsProtocol._start_asgi_task (gone)", ours)
    assert _params(proto._start_asgi_task) == ["self", "cycle", "app"], _changed(
        f"the signature of _start_asgi_task {_params(proto._start_asgi_task)}", ours
    )
    assert "self._start_asgi_task(self.cycle, app)" in _source(proto.on_headers_complete), _changed(
        "on_headers_complete (it no longer starts requests through _start_asgi_task)", ours
    )
    assert "self._start_asgi_task(cycle, app)" in _source(proto.on_response_complete), _changed(
        "on_response_complete (it no longer starts pipelined requests through _start_asgi_task)", ours
    )


def test_uvicorn_keeps_the_connection_state_the_refusal_reads_and_writes() -> None:
    """The early refusal reads `cycle`, `pipeline`, `server_state.default_headers`, sets
    `cycle.response_complete` to skip a body, counts `server_state.total_requests` and arms
    `timeout_keep_alive_task` with `timeout_keep_alive_handler`, as uvicorn's on_response_complete does."""
    proto = httptools_impl.HttpToolsProtocol
    ours = "bridle/service/protocol.py's early refusal"
    init = _source(proto.__init__)
    for attribute in (
        "self.cycle",
        "self.pipeline",
        "self.timeout_keep_alive_task",
        "self.timeout_keep_alive",
    ):
        assert f"{attribute} " in init or f"{attribute}:" in init, _changed(
            f"HttpToolsProtocol.{attribute}", ours
        )
    done = _source(proto.on_response_complete)
    for needed in (
        "self.server_state.total_requests += 1",
        "self.timeout_keep_alive_task = self.loop.call_later(",
        "self.timeout_keep_alive, self.timeout_keep_alive_handler",
    ):
        assert needed in done, _changed(f"on_response_complete (no `{needed}`)", ours)
    assert "self.server_state.default_headers" in _source(proto), _changed(
        "server_state.default_headers", ours
    )
    # the parser's body callbacks skip the body of a cycle marked complete
    for callback in (proto.on_body, proto.on_message_complete):
        assert "self.cycle.response_complete" in _source(callback), _changed(
            f"{callback.__name__} (a complete cycle's body is no longer skipped)", ours
        )
    cycle = _source(httptools_impl.RequestResponseCycle.__init__)
    for attribute in ("self.scope", "self.keep_alive", "self.response_complete"):
        assert f"{attribute} =" in cycle, _changed(f"RequestResponseCycle.{attribute}", ours)
    assert _params(proto.data_received) == ["self", "data"], _changed("data_received's signature", ours)
    assert _params(proto.timeout_keep_alive_handler) == ["self"], _changed(
        "timeout_keep_alive_handler's signature", ours
    )


def test_uvicorn_server_ticks_and_exits_as_the_drain_expects() -> None:
    """bridle/service/server.py's DrainingServer publishes the refusal counts and ends its drain in `on_tick`,
    and turns the first signal into a drain in `handle_exit`."""
    import uvicorn

    ours = "bridle/service/server.py's DrainingServer"
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick), _changed("Server.on_tick (not async)", ours)
    assert _params(uvicorn.Server.on_tick) == ["self", "counter"], _changed(
        "Server.on_tick's signature", ours
    )
    assert "await self.on_tick(counter)" in _source(uvicorn.Server.main_loop), _changed(
        "Server.main_loop (it no longer awaits on_tick)", ours
    )
    assert _params(uvicorn.Server.handle_exit) == ["self", "sig", "frame"], _changed(
        "Server.handle_exit's signature", ours
    )


def test_fastapi_walks_included_routers_with_iter_route_contexts() -> None:
    """bridle/service/routes/admission.py walks the app's routes with `fastapi.routing.iter_route_contexts`
    (FastAPI keeps an included router as one entry of `app.routes`)."""
    import fastapi
    from fastapi import APIRouter, FastAPI

    routing = pytest.importorskip("fastapi.routing")
    message = (
        f"fastapi {fastapi.__version__} changed iter_route_contexts / RouteContext, which "
        "bridle/service/routes/admission.py walks the routes with: check it before widening the bound on "
        "fastapi"
    )
    assert hasattr(routing, "iter_route_contexts"), message
    router = APIRouter(prefix="/v9")

    @router.post("/{name}")
    async def endpoint(name: str) -> None: ...

    app = FastAPI()
    app.include_router(router)
    found = [r for r in routing.iter_route_contexts(app.routes) if r.endpoint is endpoint]
    assert len(found) == 1, message
    route = found[0]
    assert (route.path, set(route.methods)) == ("/v9/{name}", {"POST"}), message
    assert route.path_regex.fullmatch("/v9/x") and list(route.param_convertors) == ["name"], message


def test_prometheus_multiprocess_files_name_their_process(tmp_path: Path) -> None:
    """bridle/service/engine_folders.py tells a live metrics folder of the older form by the pids in its
    files' names (`<kind>_<pid>.db`)."""
    code = "import os, prometheus_client as p; p.Counter('x', 'x').inc(); print(os.getpid())"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pid = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert f"counter_{pid.stdout.strip()}.db" in os.listdir(tmp_path), (
        "prometheus_client changed its multiprocess file names, which bridle/service/engine_folders.py "
        "reads: "
        f"{os.listdir(tmp_path)}"
    )
