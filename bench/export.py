"""ONNX Runtime vs PyTorch eager throughput of the exported encoder graph (goal: ratio >= 1.3).

    python -m bench.export [--preset tiny-audio] [--batch 8] [--iters 20]

Both run the same graph (preprocessing + encoder + mean pool) on the same batch, in one process, after
a warm-up; the torch and ORT runs alternate so both see the same machine load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bridle_model.checkpoint import build_servable
from bridle_model.config import preset
from export.onnx_graphs import EncoderGraph, example_signal, export_graph
from export.verify import ort_session, sample_inputs

GOAL = 1.3


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny-audio")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    config = preset(args.preset)
    servable = build_servable(config)  # fresh weights: speed does not depend on training
    graph = EncoderGraph(servable).eval()
    signal = sample_inputs(config, args.batch)
    x = torch.from_numpy(signal)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        export_graph(graph, example_signal(config, batch=2), path)
        session = ort_session(path)

    def run_torch() -> None:
        with torch.inference_mode():
            graph(x)

    def run_ort() -> None:
        session.run(["embedding"], {"signal": signal})

    for _ in range(args.warmup):
        run_torch()
        run_ort()
    torch_times, ort_times = [], []
    for _ in range(args.iters):
        torch_times.append(_time(run_torch))
        ort_times.append(_time(run_ort))

    torch_tput = args.batch / float(np.median(torch_times))
    ort_tput = args.batch / float(np.median(ort_times))
    ratio = ort_tput / torch_tput
    print(
        f"{args.preset} encoder (preprocessing + encoder + pool), batch {args.batch}, "
        f"{args.iters} timed runs each, median, torch threads {torch.get_num_threads()}"
    )
    print(f"  pytorch eager : {torch_tput:8.1f} samples/s ({1000 * np.median(torch_times):.1f} ms/batch)")
    print(f"  onnxruntime   : {ort_tput:8.1f} samples/s ({1000 * np.median(ort_times):.1f} ms/batch)")
    print(f"  ratio ORT/torch: {ratio:.2f}x (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'NOT MET'}")


if __name__ == "__main__":
    main()
