"""Throughput of our ResidualQuantizer against vector_quantize_pytorch.ResidualVQ on the same shapes.

Run: `python -m bench.quantizer [--levels 4 --codes 256 --dim 256 --batch 32 --tokens 512]`.

Two measurements per quantizer, each after warm-up, in one process: the eval-mode encode under
`torch.no_grad()` (what the tokenizer does when it labels data) and a training-mode forward (EMA updates
included, no backward). Both sides start from codebooks fitted to the same data (theirs by its own
k-means init) so that the codes spread as in real use. Prints vectors/s and the ratio ours / theirs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import typer

from bench.timing import call_times
from bridle.model.config import QuantizerConfig
from bridle.model.quantizer import ResidualQuantizer


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    return statistics.median(call_times(fn, warmup, repeats))


def _clustered(batch: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(512, dim, generator=g)
    labels = torch.randint(0, 512, (batch * tokens,), generator=g)
    x = centers[labels] + 0.3 * torch.randn(batch * tokens, dim, generator=g)
    return x.reshape(batch, tokens, dim)


def main(
    levels: int = 4,
    codes: int = 256,
    dim: int = 256,
    batch: int = 32,
    tokens: int = 512,
    warmup: int = 3,
    repeats: int = 15,
    threads: int = typer.Option(torch.get_num_threads(), help="torch threads (default: torch's)"),
) -> None:
    """Vectors/s of our RQ and of vector-quantize-pytorch's ResidualVQ, and their ratio."""
    try:
        from vector_quantize_pytorch import ResidualVQ
    except ImportError as e:  # a dev extra
        raise SystemExit("install the dev extra (vector-quantize-pytorch) to run this benchmark") from e

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = _clustered(batch, tokens, dim, seed=0)
    n = batch * tokens

    ours = ResidualQuantizer(QuantizerConfig(levels=levels, codebook_size=codes, dim=dim))
    ours.init_codebooks(x)  # k-means on the first batch, as training does
    ours.train()(x)
    variants: dict[str, torch.nn.Module] = {
        "ResidualVQ (euclidean)": ResidualVQ(
            dim=dim, num_quantizers=levels, codebook_size=codes, decay=0.99, kmeans_init=True
        ),
        "ResidualVQ (cosine)": ResidualVQ(
            dim=dim,
            num_quantizers=levels,
            codebook_size=codes,
            decay=0.99,
            kmeans_init=True,
            use_cosine_sim=True,
        ),
    }
    for theirs in variants.values():
        theirs.train()(x)

    print(
        f"shapes: {levels} levels x {codes} codes x {dim} dim, "
        f"{batch} x {tokens} vectors, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )

    def eval_encode(module: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return module(x)

        return run

    def train_forward(module: torch.nn.Module) -> Callable[[], object]:
        return lambda: module(x)

    for mode, make in (("eval encode (no grad)", eval_encode), ("train forward (EMA)", train_forward)):
        for module in (ours, *variants.values()):
            module.train(mode.startswith("train"))
        ours_s = _time(make(ours), warmup, repeats)
        print(f"{mode}:")
        print(f"  ours (ResidualQuantizer)      {n / ours_s:12,.0f} vectors/s")
        for name, theirs in variants.items():
            theirs_s = _time(make(theirs), warmup, repeats)
            print(f"  {name:<29} {n / theirs_s:12,.0f} vectors/s   ours/theirs = {theirs_s / ours_s:.2f}")


if __name__ == "__main__":
    typer.run(main)
