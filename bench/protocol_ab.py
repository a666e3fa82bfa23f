"""The protocol's own CPU per early refusal, this tree's against another revision's:
`python -m bench.protocol_ab [--base REV] [--rounds 30]`.

`bridle/service/protocol.py` of `--base` (read with `git show`) and of the working tree are loaded side by
side in one process, each bound to an admission state at its bound, on a fake transport; rounds of 10,000
plain requests to /embed go through each one's `data_received` in turn (every one a refusal: the 503 is
written, the keep-alive timer armed once). Prints the median CPU time per refusal of each (process time, so
other processes' load counts less) and their ratio. What it leaves out: the event loop, the socket and the
client, which bench.refusal_cost measures end to end (there the protocol is about a fifth of the server's
CPU per refusal).
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
import uvicorn
from uvicorn.server import ServerState

from bridle.service.middleware import AdmissionState, AdmittedRoutes

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = "bridle/service/protocol.py"
REQUEST = b"POST /embed HTTP/1.1\r\nhost: bench\r\ncontent-length: 16\r\n\r\n0123456789abcdef"
PER_ROUND = 10_000


class Transport:
    """What the protocol writes to: counts the writes; a refusal that closes the connection is an error."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        raise AssertionError("a refusal closed the connection: the request should keep it")

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def at_bound(module: ModuleType, loop: asyncio.AbstractEventLoop) -> tuple[Any, Transport]:
    """A connection of `module`'s refusing protocol whose admission state is at its bound."""
    admission = AdmissionState(1, 1, routes=AdmittedRoutes(frozenset({"/embed"})))
    admission.in_flight = 1
    protocol_class = module.refusing_protocol(admission)
    config = uvicorn.Config(app=lambda scope, receive, send: None, http=protocol_class)
    config.load()
    connection = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = Transport()
    connection.connection_made(transport)
    return connection, transport


async def measure(modules: dict[str, ModuleType], rounds: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    connections = {label: at_bound(module, loop) for label, module in modules.items()}
    ns: dict[str, list[float]] = {label: [] for label in modules}
    for _ in range(rounds):
        for label, (connection, _) in connections.items():
            began = time.process_time()
            for _ in range(PER_ROUND):
                connection.data_received(REQUEST)
            ns[label].append((time.process_time() - began) / PER_ROUND * 1e9)
    for label, (_, transport) in connections.items():
        assert transport.writes == rounds * PER_ROUND, f"{label}: not every request was refused"
    return {label: statistics.median(values) for label, values in ns.items()}


def main(
    base: Annotated[str, typer.Option(help="the revision to compare with")] = "08f89d8^",
    rounds: Annotated[int, typer.Option(help="alternating rounds of 10,000 refusals each")] = 30,
) -> None:
    source = subprocess.run(
        ["git", "show", f"{base}:{PROTOCOL}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "protocol_base.py"
        old.write_text(source)
        modules = {"base": load(old, "protocol_base"), "this tree": load(REPO / PROTOCOL, "protocol_tree")}
        medians = asyncio.run(measure(modules, rounds))
    print(f"protocol CPU per early refusal, median of {rounds} rounds of {PER_ROUND}:")
    for label, value in medians.items():
        print(f"  {label:10s} {value:7.0f} ns")
    print(f"  this tree / base ({base}): {medians['this tree'] / medians['base']:.3f}")


if __name__ == "__main__":
    typer.run(main)
