"""What checking an answer against its model costs: `python -m bench.answers [--windows 8] [--rounds 5]`.

An /embed answer with `pooling=tokens` (patch embeddings of a 64-patch x 192-dim model, as JSON numbers:
the largest answer the service renders) is rendered as the route does it, `JSONResponse(dict)`, and as
it does since the routes validate their answers: `EmbedResponse.model_validate(dict)` first. Prints the
best time of each over the rounds and their ratio (goal: <= 1.05, the check costs under 5 %).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import typer
from fastapi.responses import JSONResponse

from bridle.service.schemas import EmbedResponse


def embed_answer(windows: int, patches: int = 64, dim: int = 192) -> dict[str, Any]:
    """An /embed?pooling=tokens answer of one upload with `windows` windows, seeded random values."""
    rng = np.random.default_rng(0)

    def vector(*shape: int) -> list:
        return rng.standard_normal(shape).astype(np.float32).tolist()

    items = [
        {
            "start": float(w),
            "end": float(w + 1),
            "embedding": vector(dim),
            "patch_embeddings": vector(patches, dim),
        }
        for w in range(windows)
    ]
    result = {"filename": "a.wav", "model": "m", "modality": "audio", "duration": float(windows), "dim": dim}
    return {"results": [{**result, "embedding": vector(dim), "windows": items}]}


def best_seconds(work: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main(
    windows: Annotated[int, typer.Option(help="windows of the answer")] = 8,
    rounds: Annotated[int, typer.Option(help="timed rounds of each; the best counts")] = 5,
) -> None:
    """Render an /embed answer with and without validating it against EmbedResponse."""
    body = embed_answer(windows)
    render = best_seconds(lambda: JSONResponse(body), rounds)
    checked = best_seconds(lambda: (EmbedResponse.model_validate(body), JSONResponse(body)), rounds)
    ratio = checked / render
    print(f"/embed answer, {windows} windows x 64 x 192 patch embeddings, best of {rounds}")
    print(f"  render:              {1000 * render:7.1f} ms")
    print(f"  validate and render: {1000 * checked:7.1f} ms")
    print(f"  ratio: {ratio:.3f} (goal <= 1.05) -> {'MET' if ratio <= 1.05 else 'NOT MET'}")


if __name__ == "__main__":
    typer.run(main)
