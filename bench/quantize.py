"""int8 / float32 throughput of the bundled models, in process and through the service (goal >= 1.8x).

    python -m bench.quantize [--data data] [--models audio-digits]... [--seconds 3] [--rounds 4]
                             [--no-service] [--static] [--precision fp16 --provider CUDAExecutionProvider]

Needs the demo data (`make demo-data`): each model's int8 (or `--precision fp16`) sibling is made by
`bridle.export.quantize` into a temporary folder and gated on `data/<model>/test`, the held-out split the
bundled model never saw. Then:

1. in process: the encoder graph at batch 8 with ONNX Runtime's default threads, float32 and int8 in
   alternating rounds of `--seconds` (both see the same machine load); the ratio is the median of the
   per-round ratios, with their range;
2. through the service at saturation: `bridle-serve` on one variant at a time, 64 wrk clients posting one
   window (a wav, a PNG or an mp4) to /embed, float32 and int8 alternating for `--rounds // 2` rounds each;

beside them the gate's figures: held-out accuracy, embedding cosine and per-level code agreement.
`--static` adds ONNX Runtime's static (calibrated, QDQ) int8 of the same matmuls, calibrated on 64
training examples, in process only: the comparison that chose dynamic quantization.
"""

from __future__ import annotations

import io
import shutil
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import typer

from bench.serve import running_service
from bench.service_load import WRK_SCRIPT, LoadResult, drive
from bridle.export.gate import GateResult, load_held_out, measure_gate
from bridle.export.precision import plain_model, transformer_matmuls
from bridle.export.quantize import write_variant
from bridle.export.verify import sample_inputs
from bridle.model.manifest import GRAPHS, Manifest, read_manifest

REPO = Path(__file__).resolve().parent.parent
MODELS = ("audio-digits", "image-digits", "video-motion")
GOAL = 1.8
BATCH = 8
CLIENTS = 64
# saturation is measured with the admission bounds out of the way (they answer 503 beyond them)
UNBOUNDED = {"BRIDLE_MAX_CONCURRENT_REQUESTS": "1000000", "BRIDLE_QUEUE_SIZE": "1000000"}
CONTENT_TYPES = {"audio": "audio/wav", "image": "image/png", "video": "video/mp4"}


def session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not load (got {sess.get_providers()})")
    return sess


def rate(sess: ort.InferenceSession, signal: np.ndarray, seconds: float) -> float:
    """Examples per second of `sess` on `signal` over about `seconds` (after one warm-up run)."""
    feed = {sess.get_inputs()[0].name: signal}
    sess.run(None, feed)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, feed)
        runs += 1
    return runs * len(signal) / (time.perf_counter() - start)


def in_process(
    paths: dict[str, Path], signal: np.ndarray, seconds: float, rounds: int, provider: str
) -> dict[str, list[float]]:
    """Per precision, the examples per second of each round; the precisions alternate within a round."""
    sessions = {key: session(path, provider) for key, path in paths.items()}
    rates: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            rates[key].append(rate(sess, signal, seconds))
    return rates


def through_service(
    wrk: str, dirs: dict[str, Path], body: Path, content_type: str, seconds: float, rounds: int
) -> dict[str, list[LoadResult]]:
    """Per precision, wrk's figures at saturation on /embed, one service per variant and round."""
    lua = WRK_SCRIPT.replace('"audio/wav"', f'"{content_type}"')
    results: dict[str, list[LoadResult]] = {key: [] for key in dirs}
    for _ in range(rounds):
        for key, directory in dirs.items():
            with running_service([directory], UNBOUNDED) as service:
                results[key].append(drive(wrk, service.url, body, CLIENTS, seconds, lua=lua))
    return results


def request_body(manifest: Manifest, folder: Path) -> Path:
    """One window of realistic media for the service, encoded as a client would send it."""
    signal = sample_inputs(manifest.config(), batch=2)[0]
    if manifest.modality == "audio":
        path = folder / "window.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(manifest.input.sample_rate))
            w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
        return path
    if manifest.modality == "image":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(signal.transpose(1, 2, 0)).save(buf, format="PNG")  # (S, S, 3)
        path = folder / "window.png"
        path.write_bytes(buf.getvalue())
        return path
    from bridle.data.demo_data import write_mp4

    path = folder / "window.mp4"
    frames = signal.transpose(0, 2, 3, 1)  # (T, S, S, 3)
    write_mp4(path, frames, fps=max(1, round(len(frames) / (manifest.input.window_seconds or 2.0))))
    return path


def static_int8(model_dir: Path, manifest: Manifest, train: Path, out: Path) -> dict[str, Path]:
    """ONNX Runtime's static QDQ int8 of the same matmuls, calibrated on 64 training examples."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calibration = load_held_out(train, manifest).signals[:64]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + BATCH] for i in range(0, len(calibration), BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {manifest.input.name: batch}

    out.mkdir(parents=True)
    graphs = {}
    for key in GRAPHS:  # not features.onnx: no matrix product of the ViT blocks
        spec = manifest.files[key]
        model = plain_model(model_dir / spec.path)
        plain = out / f"plain-{spec.path}"
        onnx.save(model, str(plain))
        graphs[key] = out / spec.path
        quantize_static(
            plain,
            graphs[key],
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=transformer_matmuls(model),
        )
    return graphs


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def gate_line(gate: GateResult) -> str:
    accuracy = (
        "no classifier"
        if gate.accuracy is None
        else f"accuracy {100 * gate.accuracy:.2f} % (fp32 {100 * (gate.accuracy_fp32 or 0):.2f} %)"
    )
    codes = " / ".join(f"{100 * a:.1f}" for a in gate.code_agreement)
    return f"{accuracy}, cosine {gate.embedding_cosine:.4f}, code agreement {codes} %"


def main(
    data: Path = typer.Option(REPO / "data", help="demo data root (`make demo-data`)"),
    models: list[str] = typer.Option(list(MODELS), help="bundled model names (repeatable)"),
    seconds: float = typer.Option(3.0, help="seconds per in-process round"),
    rounds: int = typer.Option(4, help="alternating rounds in process"),
    service_seconds: float = typer.Option(8.0, help="measured seconds per service run"),
    no_service: bool = typer.Option(False, "--no-service", help="in-process figures only"),
    static: bool = typer.Option(False, "--static", help="also static (calibrated) int8, in process"),
    precision: str = typer.Option("int8", help="the variant measured: int8 or fp16"),
    provider: str = typer.Option("CPUExecutionProvider", help="ONNX Runtime provider, in process"),
) -> None:
    if precision not in ("int8", "fp16"):
        sys.exit(f"--precision {precision!r}: choose int8 or fp16")
    wrk = None if no_service else shutil.which("wrk")
    if not no_service and wrk is None:
        sys.exit(
            "bench.quantize needs wrk for the service figures (apt-get install wrk), or pass --no-service"
        )

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            source, held_out = REPO / "models" / name, data / name / "test"
            if not held_out.is_dir():
                sys.exit(f"{held_out} is missing: run `make demo-data` first")
            low = precision
            variant = write_variant(source, low, held_out, out_dir=Path(tmp) / f"{name}-{low}")
            manifest = read_manifest(source)
            graphs = {"fp32": source / "encoder.onnx", low: variant.model_dir / "encoder.onnx"}
            gates = {low: variant.gate}
            if static:
                static_graphs = static_int8(
                    source, manifest, data / name / "train", Path(tmp) / f"{name}-static"
                )
                graphs["int8-static"] = static_graphs["encoder"]
                gates["int8-static"] = measure_gate(
                    source, manifest, static_graphs, load_held_out(held_out, manifest)
                )
            signal = sample_inputs(manifest.config(), BATCH)
            rates = in_process(graphs, signal, seconds, rounds, provider)
            size = {k: path.stat().st_size / 1e6 for k, path in graphs.items()}
            where = f"batch {BATCH}, {rounds} alternating rounds, {provider}"
            lines = [f"{name}: encoder in process, {where}"]
            lines.append(
                f"  fp32          {statistics.median(rates['fp32']):8.1f} examples/s  {size['fp32']:.1f} MB"
            )
            for key in [k for k in graphs if k != "fp32"]:
                ratios = [v / b for v, b in zip(rates[key], rates["fp32"], strict=True)]
                lines.append(
                    f"  {key:<13} {statistics.median(rates[key]):8.1f} examples/s  {size[key]:.1f} MB  "
                    f"{key}/fp32 {statistics.median(ratios):.2f}x (rounds {spread(ratios)}; goal >= {GOAL})"
                )
                lines.append(f"  {'':<13} {gate_line(gates[key])}")
            if wrk is not None:
                body = request_body(manifest, Path(tmp))
                dirs = {"fp32": source, low: variant.model_dir}
                service = through_service(
                    wrk, dirs, body, CONTENT_TYPES[manifest.modality], service_seconds, 2
                )
                rps = {k: [r.throughput for r in runs] for k, runs in service.items()}
                errors = {k: sum(r.errors for r in runs) for k, runs in service.items()}
                ratios = [v / b for v, b in zip(rps[low], rps["fp32"], strict=True)]
                lines.append(
                    f"  service, {CLIENTS} clients: fp32 {statistics.median(rps['fp32']):.1f} req/s, "
                    f"{low} {statistics.median(rps[low]):.1f} req/s, {low}/fp32 "
                    f"{statistics.median(ratios):.2f}x (rounds {spread(ratios)}; goal >= {GOAL}); "
                    f"failed or timed-out requests: fp32 {errors['fp32']}, {low} {errors[low]}"
                )
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    typer.run(main)
