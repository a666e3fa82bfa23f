"""ONNX Runtime vs PyTorch eager throughput of the exported encoder graph (goal: ratio >= 1.3).

    python -m bench.export [--preset tiny-audio] [--batch 8] [--iters 30] [--rounds 3] [--opset 18]

Both run the same graph (preprocessing + encoder + mean pool) with the same weights on the same batch.
Each runtime is timed in a process of its own, as it would be deployed (torch's OpenMP threads and ORT's
thread pool, sharing one process, slow each other down), after a warm-up; the processes alternate for
`--rounds` rounds so that both see the same machine load, and the figure is the median over all runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import typer

from bench.timing import call_times, run_worker
from bridle.export.onnx_graphs import OPSET, example_signal, export_graph
from bridle.export.verify import sample_inputs
from bridle.model.checkpoint import build_servable
from bridle.model.config import preset
from bridle.model.graphs import EncoderGraph

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


def _measure_in_subprocess(
    runtime: str, work: Path, preset_name: str, iters: int, warmup: int
) -> list[float]:
    return run_worker(
        "bench.export", "--worker", runtime, "--work", str(work), "--preset", preset_name,
        "--iters", str(iters), "--warmup", str(warmup),
    )  # fmt: skip


def main(
    preset_name: str = typer.Option("tiny-audio", "--preset"),
    batch: int = 8,
    iters: int = 30,
    warmup: int = 5,
    rounds: int = 3,
    opset: int = typer.Option(OPSET, help="ONNX opset of the exported graph"),
    worker: str | None = typer.Option(None, hidden=True),  # "torch" | "ort": time one runtime here
    work: Path | None = typer.Option(None, hidden=True),
) -> None:
    """Samples/s of the exported encoder in ONNX Runtime and in PyTorch eager, and their ratio."""
    if worker is not None and work is not None:  # one runtime, in this process: print its times as JSON
        if worker == "torch":
            times = time_torch(work, preset_name, warmup, iters)
        else:
            times = time_ort(work, warmup, iters)
        print(json.dumps(times))
        return

    config = preset(preset_name)
    graph = EncoderGraph(build_servable(config)).eval()  # fresh weights: speed does not depend on training
    runs: dict[str, list[float]] = {"torch": [], "ort": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_graph(graph, example_signal(config, batch=2), folder / "encoder.onnx", opset)
        torch.save(graph.state_dict(), folder / "graph.pt")
        np.save(folder / "signal.npy", sample_inputs(config, batch))
        for _ in range(rounds):
            for runtime in runs:
                runs[runtime] += _measure_in_subprocess(runtime, folder, preset_name, iters, warmup)

    ms = {k: 1000 * float(np.median(v)) for k, v in runs.items()}
    ratio = ms["torch"] / ms["ort"]
    print(
        f"{preset_name} encoder (preprocessing + encoder + pool, opset {opset}), batch {batch}, "
        f"each runtime in its "
        f"own process, {rounds} rounds x {iters} timed runs, median; torch threads "
        f"{torch.get_num_threads()}, ORT intra-op threads: its default"
    )
    print(f"  pytorch eager : {1000 * batch / ms['torch']:8.1f} samples/s ({ms['torch']:.1f} ms/batch)")
    print(f"  onnxruntime   : {1000 * batch / ms['ort']:8.1f} samples/s ({ms['ort']:.1f} ms/batch)")
    print(f"  ratio ORT/torch: {ratio:.2f}x (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'NOT MET'}")


if __name__ == "__main__":
    typer.run(main)
