"""ONNX Runtime vs PyTorch eager throughput of the exported encoder graph (goal: ratio >= 1.3).

    python -m bench.export [--preset tiny-audio] [--batch 8] [--iters 30] [--rounds 3] [--opset 18]

Both run the same graph (preprocessing + encoder + mean pool) with the same weights on the same batch.
Each runtime is timed in a process of its own, as it would be deployed (torch's OpenMP threads and ORT's
thread pool, sharing one process, slow each other down), after a warm-up; the processes alternate for
`--rounds` rounds so that both see the same machine load, and the figure is the median over all runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.timing import call_times
from bridle_model.checkpoint import build_servable
from bridle_model.config import preset
from export.onnx_graphs import OPSET, EncoderGraph, example_signal, export_graph
from export.verify import sample_inputs

GOAL = 1.3


def time_torch(work: Path, preset_name: str, warmup: int, iters: int) -> list[float]:
    graph = EncoderGraph(build_servable(preset(preset_name))).eval()
    graph.load_state_dict(torch.load(work / "graph.pt", weights_only=True))
    x = torch.from_numpy(np.load(work / "signal.npy"))

    def run() -> None:
        with torch.inference_mode():
            graph(x)

    return call_times(run, warmup, iters)


def time_ort(work: Path, warmup: int, iters: int) -> list[float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(work / "encoder.onnx"), providers=["CPUExecutionProvider"])
    signal = np.load(work / "signal.npy")
    return call_times(lambda: session.run(["embedding"], {"signal": signal}), warmup, iters)


def _measure_in_subprocess(runtime: str, work: Path, args: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, "-m", "bench.export", "--worker", runtime, "--work", str(work)]
    cmd += ["--preset", args.preset, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {runtime} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny-audio")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset of the exported graph")
    parser.add_argument("--worker", choices=["torch", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one runtime, in this process: print its times as JSON
        if args.worker == "torch":
            times = time_torch(args.work, args.preset, args.warmup, args.iters)
        else:
            times = time_ort(args.work, args.warmup, args.iters)
        print(json.dumps(times))
        return

    config = preset(args.preset)
    graph = EncoderGraph(build_servable(config)).eval()  # fresh weights: speed does not depend on training
    times: dict[str, list[float]] = {"torch": [], "ort": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_graph(graph, example_signal(config, batch=2), work / "encoder.onnx", args.opset)
        torch.save(graph.state_dict(), work / "graph.pt")
        np.save(work / "signal.npy", sample_inputs(config, args.batch))
        for _ in range(args.rounds):
            for runtime in times:
                times[runtime] += _measure_in_subprocess(runtime, work, args)

    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    ratio = ms["torch"] / ms["ort"]
    print(
        f"{args.preset} encoder (preprocessing + encoder + pool, opset {args.opset}), batch {args.batch}, "
        f"each runtime in its "
        f"own process, {args.rounds} rounds x {args.iters} timed runs, median; torch threads "
        f"{torch.get_num_threads()}, ORT intra-op threads: its default"
    )
    print(f"  pytorch eager : {1000 * args.batch / ms['torch']:8.1f} samples/s ({ms['torch']:.1f} ms/batch)")
    print(f"  onnxruntime   : {1000 * args.batch / ms['ort']:8.1f} samples/s ({ms['ort']:.1f} ms/batch)")
    print(f"  ratio ORT/torch: {ratio:.2f}x (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'NOT MET'}")


if __name__ == "__main__":
    main()
