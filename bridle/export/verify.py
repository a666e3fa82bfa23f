"""Verify a model directory: hashes, ONNX checker, ONNX Runtime, and PyTorch vs ORT parity.

Checks, in order:
1. `manifest.json` reads and every file's sha256 matches it;
2. each graph passes `onnx.checker` and its real inputs/outputs equal the manifest's;
3. each graph loads in ONNX Runtime (CPU) and, on a batch of structured test inputs, returns outputs of
   the manifest's shapes with finite values;
4. with a checkpoint: the same inputs through the PyTorch modules give embeddings within
   `EMBEDDING_TOLERANCE` (max abs diff), the log-mel `features` within `FEATURES_TOLERANCE`, and codes
   identical on at least `CODE_AGREEMENT` of positions. A lower-precision variant (int8, fp16) passes its
   accuracy gate instead (bridle/export/gate.py): the figures stored in its manifest, and, given the float32
   `reference` directory and held-out `data`, measured anew.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bridle.export.gate import GateResult, load_held_out, measure_gate
from bridle.export.onnx_graphs import tensor_spec
from bridle.model.checkpoint import CheckpointError, Servable, load_servable
from bridle.model.config import AudioInput, ImageInput, ModelConfig, VideoInput
from bridle.model.graphs import EncoderGraph, TokenizerGraph
from bridle.model.inputs import ModalityInput
from bridle.model.manifest import GRAPHS, GraphFile, Manifest, ManifestError, TensorSpec, read_manifest
from bridle.model.preprocessing import build_preprocessor

EMBEDDING_TOLERANCE = 1e-4  # max abs diff, torch vs ORT, of every float output
# the log-mel features alone: the log of a float32 power spectrum moves most in the bins near Kaldi's energy
# floor, where matmul kernels' rounding differs (8.5e-5 seen on an imported BEATs at 992 frames); the
# encoder's outputs, which read these features, are held to EMBEDDING_TOLERANCE above
FEATURES_TOLERANCE = 5e-4
CODE_AGREEMENT = 0.999  # share of code positions that must be identical
VERIFY_BATCH = 16  # enough patches that one near-tie flip (one patch, every level) stays under 0.1 %


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    model_dir: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # e.g. "encoder.embedding max_abs_diff"

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            "figures": self.figures,
        }

    def __str__(self) -> str:
        lines = [f"verify {self.model_dir}: {'PASSED' if self.ok else 'FAILED'}"]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def verify(
    model_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | Servable | None = None,
    reference: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Run every check on `model_dir` (and PyTorch parity when `checkpoint` is given; a variant's gate
    against the float32 `reference` on held-out `data` when both are given); never raises on a bad model,
    the report says what failed."""
    root = Path(model_dir)
    report = VerifyReport(model_dir=str(root))
    try:
        manifest = read_manifest(root, check_hashes=True)
    except ManifestError as e:
        report.add("manifest", False, str(e))
        return report
    report.add("manifest", True, f"read, sha256 of {len(manifest.files)} files match")
    try:
        config = manifest.config()
    except ManifestError as e:
        report.add("model_config", False, str(e))
        return report

    signal = sample_inputs(config, VERIFY_BATCH)
    ort_outputs: dict[str, dict[str, np.ndarray]] = {}
    for key, graph in manifest.files.items():
        outputs = _check_graph(report, root, key, graph, signal)
        if outputs is not None:
            ort_outputs[key] = outputs

    if manifest.precision != "fp32":
        if report.ok:
            _check_gate(report, root, manifest, reference, data)
    elif checkpoint is not None and report.ok:
        _check_parity(report, manifest, config, checkpoint, signal, ort_outputs)
    return report


def _check_gate(
    report: VerifyReport,
    root: Path,
    manifest: Manifest,
    reference: str | os.PathLike[str] | None,
    data: str | os.PathLike[str] | None,
) -> None:
    """A variant's stored gate figures pass its thresholds; with `reference` and `data`, so do new ones."""
    try:
        stored = GateResult.from_dict(manifest.gate or {})
    except (KeyError, TypeError) as e:
        report.add("gate: stored", False, f"the manifest's gate record is malformed: {e!r}")
        return
    report.add("gate: stored", stored.passed, "; ".join(stored.failures) or stored.summary())
    if reference is None or data is None:
        return
    try:
        ref_manifest = read_manifest(reference, check_hashes=True)
        if ref_manifest.precision != "fp32" or ref_manifest.model_config != manifest.model_config:
            raise ManifestError(f"{reference} is not the float32 directory of the same model")
        held_out = load_held_out(data, ref_manifest)
    except (ManifestError, ValueError) as e:
        report.add("gate: measured", False, str(e))
        return
    graphs = {key: root / manifest.files[key].path for key in GRAPHS}  # features.onnx is not gated
    gate = measure_gate(reference, ref_manifest, graphs, held_out)
    report.figures["gate embedding_cosine"] = gate.embedding_cosine
    report.figures["gate code_agreement level 1"] = gate.code_agreement[0]
    if gate.accuracy_drop is not None:
        report.figures["gate accuracy_drop points"] = gate.accuracy_drop
    report.add("gate: measured", gate.passed, "; ".join(gate.failures) or gate.summary())


def _check_graph(
    report: VerifyReport, root: Path, key: str, graph: GraphFile, signal: np.ndarray
) -> dict[str, np.ndarray] | None:
    """onnx.checker, signature vs manifest, ORT load and run; the ORT outputs by name, or None."""
    path = root / graph.path
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # a corrupt file raises DecodeError, ValidationError, ...
        report.add(f"{key}: onnx", False, f"{graph.path} is not a valid ONNX model: {type(e).__name__}: {e}")
        return None
    real_inputs = [tensor_spec(v) for v in model.graph.input]
    real_outputs = [tensor_spec(v) for v in model.graph.output]
    if not report.add(
        f"{key}: signature",
        real_inputs == graph.inputs and real_outputs == graph.outputs,
        f"graph {_describe(real_inputs)} -> {_describe(real_outputs)}; manifest "
        f"{_describe(graph.inputs)} -> {_describe(graph.outputs)}",
    ):
        return None

    try:
        session = ort_session(path)
        names = [o.name for o in graph.outputs]
        values = session.run(names, {graph.inputs[0].name: signal})
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
        report.add(
            f"{key}: onnxruntime", False, f"{graph.path} does not load or run: {type(e).__name__}: {e}"
        )
        return None
    outputs = dict(zip(names, values, strict=True))
    batch = signal.shape[0]
    problems = []
    for spec in graph.outputs:
        want = [batch if isinstance(d, str) else d for d in spec.shape]
        got = outputs[spec.name]
        if list(got.shape) != want or got.dtype != np.dtype(spec.dtype):
            problems.append(f"{spec.name} {got.dtype}{list(got.shape)} != {spec.dtype}{want}")
        elif got.dtype.kind == "f" and not np.isfinite(got).all():
            problems.append(f"{spec.name} has non-finite values")
    report.add(
        f"{key}: onnxruntime",
        not problems,
        "; ".join(problems) or f"runs on a batch of {batch}, outputs match the manifest's shapes",
    )
    return outputs if not problems else None


def _check_parity(
    report: VerifyReport,
    manifest: Manifest,
    config: ModelConfig,
    checkpoint: str | os.PathLike[str] | Servable,
    signal: np.ndarray,
    ort_outputs: dict[str, dict[str, np.ndarray]],
) -> None:
    """The graphs' outputs (`ort_outputs`, on `signal`) against the checkpoint's torch modules on the same
    inputs: the embeddings, the features graph, the codes and, where they agree, the quantized vectors."""
    servable = _matching_servable(report, manifest, config, checkpoint)
    if servable is None:
        return
    x = torch.from_numpy(signal)
    with torch.no_grad():
        encoder_graph = EncoderGraph(servable).eval()
        encoder = dict(zip(encoder_graph.output_names, encoder_graph(x), strict=True))
        tokenizer = dict(zip(TokenizerGraph.output_names, TokenizerGraph(servable).eval()(x), strict=True))
    _check_embeddings(report, encoder, ort_outputs["encoder"])
    if "features" in ort_outputs:  # the preprocessing cut out of the encoder, against the torch module
        with torch.no_grad():
            features = build_preprocessor(config)(x).numpy()
        _check_close(
            report, "features", "features", features, ort_outputs["features"]["features"], FEATURES_TOLERANCE
        )
    _check_codes(report, tokenizer, ort_outputs["tokenizer"])


def _matching_servable(
    report: VerifyReport,
    manifest: Manifest,
    config: ModelConfig,
    checkpoint: str | os.PathLike[str] | Servable,
) -> Servable | None:
    """The checkpoint, in eval mode, when it loads and its config, labels and label ids are the manifest's;
    else None, with the failed check reported."""
    try:
        servable = checkpoint if isinstance(checkpoint, Servable) else load_servable(checkpoint)
    except CheckpointError as e:
        report.add("checkpoint", False, str(e))
        return None
    if (
        servable.config != config
        or list(servable.labels) != manifest.labels
        or servable.label_ids != manifest.label_ids
    ):
        report.add(
            "checkpoint", False, "the checkpoint's config, labels or label ids differ from the manifest's"
        )
        return None
    return servable.eval()


def _check_embeddings(
    report: VerifyReport, torch_out: dict[str, torch.Tensor], ort_out: dict[str, np.ndarray]
) -> None:
    """Each encoder output of torch and ORT within `EMBEDDING_TOLERANCE`."""
    for name, value in torch_out.items():
        _check_close(report, "encoder", name, value.numpy(), ort_out[name], EMBEDDING_TOLERANCE)


def _check_close(
    report: VerifyReport,
    graph: str,
    name: str,
    torch_value: np.ndarray,
    ort_value: np.ndarray,
    tolerance: float,
) -> None:
    diff = float(np.abs(torch_value - ort_value).max())
    report.figures[f"{graph}.{name} max_abs_diff"] = diff
    report.add(
        f"parity: {name}",
        diff <= tolerance,
        f"max abs diff torch vs ORT {diff:.2e} (tolerance {tolerance:.0e})",
    )


def _check_codes(
    report: VerifyReport, torch_out: dict[str, torch.Tensor], ort_out: dict[str, np.ndarray]
) -> None:
    """The tokenizer's codes agree at `CODE_AGREEMENT` of the positions at least, and where every level's
    code agrees, the quantized vectors agree within `EMBEDDING_TOLERANCE`."""
    same = torch_out["codes"].numpy() == ort_out["codes"]  # (B, N, L)
    agreement = float(same.mean())
    report.figures["tokenizer.codes agreement"] = agreement
    report.add(
        "parity: codes",
        agreement >= CODE_AGREEMENT,
        f"{agreement:.4%} of {same.size} code positions identical (need {CODE_AGREEMENT:.1%})",
    )
    rows = same.all(axis=-1)  # (B, N)
    q_torch, q_ort = torch_out["quantized"].numpy(), ort_out["quantized"]
    diff = float(np.abs(q_torch[rows] - q_ort[rows]).max()) if rows.any() else math.inf
    report.figures["tokenizer.quantized max_abs_diff"] = diff
    report.add(
        "parity: quantized",
        diff <= EMBEDDING_TOLERANCE,
        f"max abs diff torch vs ORT {diff:.2e} where the codes agree",
    )


def ort_session(path: str | os.PathLike[str], threads: int = 0) -> ort.InferenceSession:
    """A CPU session that does not spin (torch shares the process; spinning ORT threads slow it ~10x)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in specs)


# ---- structured test inputs --------------------------------------------------------------------------


def sample_inputs(config: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
    """Realistic inputs for `config`'s graphs: speech-like sounds and noise for audio, handwritten digits
    (scikit-learn) for images, digits moving across the frame for video; for another modality, random
    values of its signal (0..255 for uint8, 0.1 x normal for float)."""
    rng = np.random.default_rng(seed)
    inp = config.input
    if isinstance(inp, AudioInput):
        waves = [_speech_like(inp.window_samples, inp.sample_rate, rng) for _ in range(batch)]
        waves[-1] = 0.1 * rng.standard_normal(inp.window_samples)  # one window of white noise
        return np.stack(waves).astype(np.float32)  # (B, samples)
    if not isinstance(inp, ImageInput | VideoInput):
        return _random_signal(inp, batch, rng)  # (B, *signal)
    digits = _digit_images(batch, inp.image_size, rng)  # (B, 3, S, S) uint8
    if isinstance(inp, ImageInput):
        return digits
    shifts = np.linspace(-inp.image_size // 4, inp.image_size // 4, inp.num_frames).round().astype(int)
    frames = [np.roll(digits, (int(s), int(s) // 2), axis=(2, 3)) for s in shifts]
    return np.stack(frames, axis=1)  # (B, T, 3, S, S)


def _random_signal(inp: ModalityInput, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(B, *signal) random values in the signal's dtype: 0..255 for uint8, 0.1 x normal for float32."""
    shape = (batch, *inp.signal_shape())
    if inp.signal_dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (0.1 * rng.standard_normal(shape)).astype(inp.signal_dtype)


def _speech_like(samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced harmonics with a gliding pitch, two formant bumps, syllable envelope and breath noise."""
    t = np.arange(samples) / rate
    f0 = rng.uniform(90, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = rng.uniform([300, 900], [900, 2500])
    wave = np.zeros(samples)
    for k in range(1, int(rate / 2 / f0.max())):
        freq = k * f0
        gain = sum(np.exp(-(((freq - f) / 150.0) ** 2)) for f in formants) + 0.05
        wave += gain * np.sin(k * phase) / k
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, np.pi)), 0, None) ** 2
    wave = wave * envelope + 0.01 * rng.standard_normal(samples)
    return 0.5 * wave / (np.abs(wave).max() + 1e-8)


def _digit_images(batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images  # (1797, 8, 8) in [0, 16]
    picks = rng.choice(len(digits), size=batch, replace=False)
    ramp = np.linspace(0, 60, size)[None, :] + np.linspace(0, 40, size)[:, None]  # background gradient
    images = []
    for i in picks:
        gray = Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        ink = np.asarray(gray, dtype=np.float64) / 255.0  # (S, S)
        colour = rng.uniform(80, 255, size=3)
        rgb = ramp[None] * (1 - ink[None]) + colour[:, None, None] * ink[None]  # (3, S, S)
        images.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(images)
