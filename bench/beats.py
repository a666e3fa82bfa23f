"""BEATs-base throughput: the imported model's ONNX encoder graph vs the upstream PyTorch code (goal >= 1.2).

    python -m bench.beats [--batch 2] [--iters 3] [--rounds 2] [--opset 18] [--service-seconds 60]

A BEATs-base checkpoint (upstream's iter3 AS2M fine-tuned configuration: 12 x 768, 527 classes) with
seeded-random weights is written in upstream's layout, imported with `bridle.importers.beats`, and its encoder
graph exported. Both sides then turn the same batch of ~10 s windows (158,960 samples, 992 frames,
496 patches) into per-class logits:

- reference: the port of upstream's code in bridle/data/reference_beats.py, PyTorch eager, with
  this project's torch fbank standing in for torchaudio's (which does not install beside torch 2.13);
- ONNX Runtime: `encoder.onnx` (fbank, encoder, pooling and head in one graph), on the CPU provider with
  one thread per core that does not spin while idle, as the service runs its sessions (spinning threads
  lose most of their time slices on a machine that is busy with anything else).

Each side runs in a process of its own (torch's OpenMP threads and ORT's pool slow each other when they
share one), the processes alternate for `--rounds` rounds, and the figure is the median over all timed
runs. The two sides' logits are compared as well, as a check that they compute the same thing.

With `--service-seconds S` it also exports a model directory, serves it with `bridle-serve` and posts
one-window wavs to `POST /embed` from `--clients` connections for S seconds: windows per second through
the service.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import typer

from bench.timing import call_times, run_worker
from bridle.data.beats_files import randomise, save_upstream
from bridle.data.reference_beats import BEATs, Config
from bridle.export.onnx_graphs import OPSET, example_signal, export_graph
from bridle.export.verify import ort_session, sample_inputs
from bridle.importers.beats import import_beats
from bridle.model.beats import beats_audio_input
from bridle.model.checkpoint import Servable
from bridle.model.config import ModelConfig
from bridle.model.graphs import EncoderGraph
from bridle.model.preprocessing import build_preprocessor

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
    session = ort_session(work / "encoder.onnx")
    signal = np.load(work / "signal.npy")
    return call_times(lambda: session.run(["logits"], {"signal": signal}), warmup, iters)


def prepare(work: Path, batch: int, opset: int) -> tuple[float, Servable]:
    """Write the checkpoint, import it, export the encoder graph, save the batch;
    -> (max |logit diff|, the imported servable)."""
    upstream = BEATs(Config(BASE_CFG)).eval()
    randomise(upstream, seed=0)
    labels = {i: f"class {i}" for i in range(BASE_CFG["predictor_class"])}
    save_upstream(work / "BEATs_base.pt", upstream, BASE_CFG, label_dict=labels)
    servable = import_beats(work / "BEATs_base.pt")
    graph = EncoderGraph(servable).eval()
    export_graph(graph, example_signal(servable.config, batch=2), work / "encoder.onnx", opset)
    signal = sample_inputs(servable.config, batch)
    np.save(work / "signal.npy", signal)

    (ort_logits,) = ort_session(work / "encoder.onnx").run(["logits"], {"signal": signal})
    with torch.inference_mode():
        expected = reference_logits(upstream, torch.from_numpy(signal)).numpy()
    return float(np.abs(ort_logits - expected).max()), servable


def service_windows_per_second(work: Path, servable: Servable, clients: int, seconds: float) -> float:
    """Export a model directory, serve it with `bridle-serve`, and let `clients` threads post a one-window
    wav to /embed back to back for `seconds` (after one request each to warm up); -> windows per second.

    A Python client is cheap here: a window takes seconds of CPU, the client microseconds per request."""
    from bench.serve import closed_loop_rate, running_service
    from bench.service_load import wav_bytes
    from bridle.export.model_dir import export_model_dir

    model_dir = export_model_dir(servable, work / "beats-base", name="beats-base", run_verify=False).model_dir
    body = wav_bytes(servable.config.input.window_samples, servable.config.input.sample_rate)
    # the warm-up runs full batches: at this size, batches of `clients` keep the start-up short
    with running_service([model_dir], {"BRIDLE_MAX_BATCH_SIZE": str(clients)}) as service:
        return closed_loop_rate(service.url, "/embed", body, "audio/wav", clients, seconds)


def _measure_in_subprocess(runtime: str, work: Path, iters: int, warmup: int) -> list[float]:
    return run_worker(
        "bench.beats",
        "--worker",
        runtime,
        "--work",
        str(work),
        "--iters",
        str(iters),
        "--warmup",
        str(warmup),
    )


def main(
    batch: Annotated[int, typer.Option(help="10 s windows per call")] = 2,
    iters: Annotated[int, typer.Option()] = 3,
    warmup: Annotated[int, typer.Option()] = 1,
    rounds: Annotated[int, typer.Option()] = 2,
    opset: Annotated[int, typer.Option(help="ONNX opset of the exported graph")] = OPSET,
    service_seconds: Annotated[
        float, typer.Option(help="also measure the service's windows/s (0: skip)")
    ] = 0.0,
    clients: Annotated[int, typer.Option(help="client connections for the service figure")] = 2,
    worker: Annotated[Literal["reference", "ort"] | None, typer.Option(hidden=True)] = None,
    worker_dir: Annotated[Path | None, typer.Option("--work", hidden=True)] = None,
) -> None:
    """The imported BEATs encoder through ONNX Runtime against the upstream PyTorch code."""
    if worker:  # one runtime, in this process: print its times as JSON
        timer = time_reference if worker == "reference" else time_ort
        print(json.dumps(timer(worker_dir, warmup, iters)))
        return

    times: dict[str, list[float]] = {"reference": [], "ort": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        diff, servable = prepare(work, batch, opset)
        for _ in range(rounds):
            for runtime in times:
                times[runtime] += _measure_in_subprocess(runtime, work, iters, warmup)
        report(times, diff, batch, opset, rounds, iters)
        if service_seconds > 0:
            service = service_windows_per_second(work, servable, clients, service_seconds)
            ort_rate = batch / float(np.median(times["ort"]))  # windows/s in process
            print(
                f"  service (bridle-serve, POST /embed, {clients} clients, one-window wavs, batches "
                f"of <= {clients}, {service_seconds:g} s): {service:.2f} windows/s = "
                f"{service / ort_rate:.2f} x in-process ORT"
            )


def report(
    times: dict[str, list[float]], diff: float, batch: int, opset: int, rounds: int, iters: int
) -> None:
    """Print both sides' throughput (median over all timed runs) and their ratio."""
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    ratio = ms["reference"] / ms["ort"]
    print(
        f"BEATs-base (12 x 768, 496 patches, 527 classes), random weights, batch {batch} x 9.935 s, "
        f"opset {opset}; each side in its own process, {rounds} rounds x {iters} timed runs, "
        f"median; torch threads {torch.get_num_threads()}, ORT intra-op threads: its default, no spinning"
    )
    print(f"  reference (upstream port, PyTorch eager): {1000 * batch / ms['reference']:6.2f} windows/s "
          f"({ms['reference']:.0f} ms/batch)")  # fmt: skip
    print(f"  onnxruntime (encoder.onnx)              : {1000 * batch / ms['ort']:6.2f} windows/s "
          f"({ms['ort']:.0f} ms/batch)")  # fmt: skip
    print(f"  logits max |ORT - reference|: {diff:.2e}")
    print(
        f"  ratio ORT/reference: {ratio:.2f}x (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'NOT MET'}",
        flush=True,
    )


if __name__ == "__main__":
    typer.run(main)
