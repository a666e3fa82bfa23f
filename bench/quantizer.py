"""Throughput of our ResidualQuantizer against vector_quantize_pytorch.ResidualVQ on the same shapes.

Run: `python -m bench.quantizer [--levels 4 --codes 256 --dim 256 --batch 32 --tokens 512]`.

Two measurements per quantizer, each after warm-up, in one process: the eval-mode encode under
`torch.no_grad()` (what the tokenizer does when it labels data) and a training-mode forward (EMA updates
included, no backward). Both sides start from codebooks fitted to the same data (theirs by its own
k-means init) so that the codes spread as in real use. Prints vectors/s and the ratio ours / theirs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from bench.timing import call_times
from bridle_model.config import QuantizerConfig
from bridle_model.quantizer import ResidualQuantizer


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    return statistics.median(call_times(fn, warmup, repeats))


def _clustered(batch: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(512, dim, generator=g)
    labels = torch.randint(0, 512, (batch * tokens,), generator=g)
    x = centers[labels] + 0.3 * torch.randn(batch * tokens, dim, generator=g)
    return x.reshape(batch, tokens, dim)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)

    try:
        from vector_quantize_pytorch import ResidualVQ
    except ImportError as e:  # a dev extra
        raise SystemExit("install the dev extra (vector-quantize-pytorch) to run this benchmark") from e

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = _clustered(args.batch, args.tokens, args.dim, seed=0)
    n = args.batch * args.tokens

    ours = ResidualQuantizer(QuantizerConfig(levels=args.levels, codebook_size=args.codes, dim=args.dim))
    ours.train()(x)  # k-means init on the first batch
    variants: dict[str, torch.nn.Module] = {
        "ResidualVQ (euclidean)": ResidualVQ(
            dim=args.dim, num_quantizers=args.levels, codebook_size=args.codes, decay=0.99, kmeans_init=True
        ),
        "ResidualVQ (cosine)": ResidualVQ(
            dim=args.dim,
            num_quantizers=args.levels,
            codebook_size=args.codes,
            decay=0.99,
            kmeans_init=True,
            use_cosine_sim=True,
        ),
    }
    for theirs in variants.values():
        theirs.train()(x)

    print(
        f"shapes: {args.levels} levels x {args.codes} codes x {args.dim} dim, "
        f"{args.batch} x {args.tokens} vectors, {torch.get_num_threads()} threads, torch {torch.__version__}"
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
        ours_s = _time(make(ours), args.warmup, args.repeats)
        print(f"{mode}:")
        print(f"  ours (ResidualQuantizer)      {n / ours_s:12,.0f} vectors/s")
        for name, theirs in variants.items():
            theirs_s = _time(make(theirs), args.warmup, args.repeats)
            print(f"  {name:<29} {n / theirs_s:12,.0f} vectors/s   ours/theirs = {theirs_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
