"""The engine protocol's cost per request part: `python -m bench.wire [--rounds 200000]`.

One request part crosses the engine socket as two messages: the front end encodes a `Run`, the engine
decodes it, encodes the `Done` answer, and the front end decodes that (bridle/runtime/wire.py). This
times those four steps, CPU only (no socket), for

- typed: the dataclasses of bridle/runtime/wire.py (`encode`, `decode`: orjson);
- dicts: the same frames built and parsed as plain dicts with the standard library's json, as the client
  and engine did before the messages were typed (the baseline: JSON objects of the same fields,
  length-prefixed the same way),

alternated A B A B in one run, and prints microseconds per part and the ratio typed / dicts.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from bridle.runtime import wire
from bridle.runtime.wire import HEADER, Done, Placed, Run

OUTPUTS = ["embedding"]
PLACED = [["embedding", "float32", [16, 384], 983040]]  # one output of a batch of 16 windows


def typed_part(i: int) -> None:
    run = wire.encode(Run(i, i % 64, "audio-digits#1", "encoder", 16, OUTPUTS))
    m = wire.decode(run[HEADER.size :])
    done = wire.encode(Done(m.id, [Placed(*p) for p in PLACED]))
    answer = wire.decode(done[HEADER.size :])
    assert isinstance(answer, Done)


def _frame(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def dict_part(i: int) -> None:
    run = {"op": "run", "id": i, "slot": i % 64, "model": "audio-digits#1", "graph": "encoder"}
    run |= {"rows": 16, "outputs": list(OUTPUTS)}
    m = json.loads(_frame(run)[HEADER.size :])
    done = _frame({"id": m["id"], "ok": True, "outputs": PLACED})
    answer = json.loads(done[HEADER.size :])
    assert answer["ok"]


def per_part_us(part, rounds: int) -> float:
    started = time.perf_counter()
    for i in range(rounds):
        part(i)
    return (time.perf_counter() - started) / rounds * 1e6


def main(rounds: Annotated[int, typer.Option(help="request parts per phase")] = 200_000) -> None:
    times: dict[str, list[float]] = {"typed": [], "dicts": []}
    for name in ("dicts", "typed", "dicts", "typed"):
        us = per_part_us(typed_part if name == "typed" else dict_part, rounds)
        times[name].append(us)
        print(f"{name}: {us:.2f} us per request part (Run + Done, encoded and decoded)")
    ratio = sum(times["typed"]) / sum(times["dicts"])
    print(f"typed / dicts: {ratio:.2f}")


if __name__ == "__main__":
    typer.run(main)
