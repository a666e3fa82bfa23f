"""BEATs-base throughput: the imported model's ONNX encoder graph vs the upstream PyTorch code (goal >= 1.2).

    python -m bench.beats [--batch 2] [--iters 3] [--rounds 2] [--opset 18]

A BEATs-base checkpoint (upstream's iter3 AS2M fine-tuned configuration: 12 x 768, 527 classes) with
seeded-random weights is written in upstream's layout, imported with `importers.beats`, and its encoder
graph exported. Both sides then turn the same batch of ~10 s windows (158,960 samples, 992 frames,
496 patches) into per-class logits:

- reference: the port of upstream's code in tests/importers/reference_beats.py, PyTorch eager, with
  this project's torch fbank standing in for torchaudio's (which does not install beside torch 2.13);
- ONNX Runtime: `encoder.onnx` (fbank, encoder, pooling and head in one graph), default session options.

Each side runs in a process of its own (torch's OpenMP threads and ORT's pool slow each other when they
share one), the processes alternate for `--rounds` rounds, and the figure is the median over all timed
runs. The two sides' logits are compared as well, as a check that they compute the same thing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import call_times
from bridle_model.beats import beats_audio_input
from bridle_model.config import ModelConfig
from bridle_model.preprocessing import build_preprocessor
from export.onnx_graphs import OPSET, EncoderGraph, example_signal, export_graph
from export.verify import sample_inputs
from importers.beats import import_beats

GOAL = 1.2
# upstream's BEATs_iter3_plus_AS2M fine-tuned configuration (the fields that differ from its defaults)
BASE_CFG: dict[str, Any] = {
    "input_patch_size": 16, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "deep_norm": True, "layer_norm_first": False, "conv_pos": 128,
    "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800,
    "gru_rel_pos": True, "finetuned_model": True, "predictor_class": 527, "dropout": 0.0,
    "layer_wise_gradient_decay_ratio": 0.6, "predictor_dropout": 0.0,
}  # fmt: skip
STAND_IN_FBANK = build_preprocessor(ModelConfig(modality="audio", input=beats_audio_input()))


def reference_model(work: Path) -> torch.nn.Module:
    from tests.importers.reference_beats import BEATs, Config

    raw = torch.load(work / "BEATs_base.pt", weights_only=True)
    model = BEATs(Config(raw["cfg"])).eval()
    model.load_state_dict(raw["model"])
    return model


def reference_logits(model: torch.nn.Module, signal: torch.Tensor) -> torch.Tensor:
    """Upstream's path: fbank (the torch stand-in), normalise, network, mean of per-token logits."""
    fbank = STAND_IN_FBANK(signal)[:, 0]  # (B, frames, 128), normalised with BEATs' statistics
    return model.extract_features(fbank)[1]


def time_reference(work: Path, warmup: int, iters: int) -> list[float]:
    model = reference_model(work)
    x = torch.from_numpy(np.load(work / "signal.npy"))

    def run() -> None:
        with torch.inference_mode():
            reference_logits(model, x)

    return call_times(run, warmup, iters)


def time_ort(work: Path, warmup: int, iters: int) -> list[float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(work / "encoder.onnx"), providers=["CPUExecutionProvider"])
    signal = np.load(work / "signal.npy")
    return call_times(lambda: session.run(["logits"], {"signal": signal}), warmup, iters)


def prepare(work: Path, batch: int, opset: int) -> float:
    """Write the checkpoint, import it, export the encoder graph, save the batch; -> max |logit diff|."""
    from tests.importers.beats_files import randomise, save_upstream
    from tests.importers.reference_beats import BEATs, Config

    upstream = BEATs(Config(BASE_CFG)).eval()
    randomise(upstream, seed=0)
    labels = {i: f"class {i}" for i in range(BASE_CFG["predictor_class"])}
    save_upstream(work / "BEATs_base.pt", upstream, BASE_CFG, label_dict=labels)
    servable = import_beats(work / "BEATs_base.pt")
    graph = EncoderGraph(servable).eval()
    export_graph(graph, example_signal(servable.config, batch=2), work / "encoder.onnx", opset)
    signal = sample_inputs(servable.config, batch)
    np.save(work / "signal.npy", signal)

    import onnxruntime as ort

    session = ort.InferenceSession(str(work / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (ort_logits,) = session.run(["logits"], {"signal": signal})
    with torch.inference_mode():
        expected = reference_logits(upstream, torch.from_numpy(signal)).numpy()
    return float(np.abs(ort_logits - expected).max())


def _measure_in_subprocess(runtime: str, work: Path, args: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, "-m", "bench.beats", "--worker", runtime, "--work", str(work)]
    cmd += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {runtime} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2, help="10 s windows per call")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset of the exported graph")
    parser.add_argument("--worker", choices=["reference", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one runtime, in this process: print its times as JSON
        timer = time_reference if args.worker == "reference" else time_ort
        print(json.dumps(timer(args.work, args.warmup, args.iters)))
        return

    times: dict[str, list[float]] = {"reference": [], "ort": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        diff = prepare(work, args.batch, args.opset)
        for _ in range(args.rounds):
            for runtime in times:
                times[runtime] += _measure_in_subprocess(runtime, work, args)

    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    ratio = ms["reference"] / ms["ort"]
    print(
        f"BEATs-base (12 x 768, 496 patches, 527 classes), random weights, batch {args.batch} x 9.935 s, "
        f"opset {args.opset}; each side in its own process, {args.rounds} rounds x {args.iters} timed runs, "
        f"median; torch threads {torch.get_num_threads()}, ORT intra-op threads: its default"
    )
    print(f"  reference (upstream port, PyTorch eager): {1000 * args.batch / ms['reference']:6.2f} windows/s "
          f"({ms['reference']:.0f} ms/batch)")  # fmt: skip
    print(f"  onnxruntime (encoder.onnx)              : {1000 * args.batch / ms['ort']:6.2f} windows/s "
          f"({ms['ort']:.0f} ms/batch)")  # fmt: skip
    print(f"  logits max |ORT - reference|: {diff:.2e}")
    print(f"  ratio ORT/reference: {ratio:.2f}x (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'NOT MET'}")


if __name__ == "__main__":
    main()
