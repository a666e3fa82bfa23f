"""The accuracy gate of a lower-precision model directory, against its float32 original, on held-out data.

A variant (int8, fp16) cannot match float32 to 1e-4 as an export must match PyTorch, so it passes this
gate instead:
- held-out classification accuracy at most `MAX_ACCURACY_DROP` points below float32's (when the model
  has a classifier);
- mean cosine of its pooled embeddings to float32's at least `MIN_EMBEDDING_COSINE`;
- per-level code agreement with float32's tokenizer, reported beside `CODE_AGREEMENT_GOAL` for level 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bridle.model.decoding import MediaError
from bridle.model.manifest import Manifest
from bridle.model.media_sets import decode_example, entries_from, label_targets
from bridle.model.modalities import spec_for

log = logging.getLogger(__name__)

MAX_ACCURACY_DROP = 0.5  # percentage points below float32
MIN_EMBEDDING_COSINE = 0.99  # mean over the held-out examples
CODE_AGREEMENT_GOAL = 0.95  # level 1; reported, not gated
GATE_BATCH = 32


@dataclass(frozen=True)
class HeldOut:
    """Held-out examples as the graphs take them, and their label indices in the manifest's order."""

    source: str
    signals: np.ndarray  # (n, ...) one window each
    targets: np.ndarray  # (n,) int64, -1 where unlabelled


def load_held_out(source: str | os.PathLike[str], manifest: Manifest) -> HeldOut:
    """Decode a folder of class sub-folders or a CSV/JSONL manifest the way training does (first window
    of each audio clip, T frames sampled over each video); labels must be among the model's. A file that
    cannot be decoded is left out with a warning, as training leaves it out."""
    cfg = manifest.config()
    spec = spec_for(cfg.modality)
    try:
        entries = entries_from(Path(source), cfg.modality, "label", None, None)
        if not entries:
            raise ValueError(f"no {cfg.modality} files found")
        _, targets = label_targets(entries, manifest.labels or None)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"held-out data {str(source)!r}: {e}") from e
    signals, kept = [], []
    for entry, target in zip(entries, targets, strict=True):
        try:
            array = decode_example(entry.source, cfg)
        except (MediaError, OSError) as e:
            log.warning("skipping %s: %s", entry.path, e)
            continue
        signals.append(spec.training_item(array, cfg.input, 0))  # audio: its window, start-aligned
        kept.append(target)
    if not signals:
        raise ValueError(f"held-out data {str(source)!r}: none of the {len(entries)} files could be decoded")
    return HeldOut(str(source), np.stack(signals), np.asarray(kept, dtype=np.int64))


@dataclass(frozen=True)
class GateResult:
    data: str
    examples: int
    accuracy_fp32: float | None  # None without a classifier or labels
    accuracy: float | None
    embedding_cosine: float  # mean over examples of cos(variant, float32) of the pooled embedding
    code_agreement: list[float]  # per level: share of (example, patch) codes equal to float32's
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    min_embedding_cosine: float = MIN_EMBEDDING_COSINE
    code_agreement_goal: float = CODE_AGREEMENT_GOAL

    @property
    def accuracy_drop(self) -> float | None:
        """Percentage points the variant loses against float32."""
        if self.accuracy is None or self.accuracy_fp32 is None:
            return None
        return 100.0 * (self.accuracy_fp32 - self.accuracy)

    @property
    def failures(self) -> list[str]:
        problems = []
        drop = self.accuracy_drop
        if drop is not None and drop > self.max_accuracy_drop:
            problems.append(
                f"accuracy {self.accuracy:.2%} is {drop:.2f} points below float32's {self.accuracy_fp32:.2%} "
                f"(at most {self.max_accuracy_drop} allowed)"
            )
        if not self.embedding_cosine >= self.min_embedding_cosine:
            problems.append(
                f"mean embedding cosine to float32 {self.embedding_cosine:.4f} < {self.min_embedding_cosine}"
            )
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        accuracy = (
            "no classifier"
            if self.accuracy is None
            else f"accuracy {self.accuracy:.2%} vs float32 {self.accuracy_fp32:.2%}"
        )
        codes = " / ".join(f"{a:.1%}" for a in self.code_agreement)
        goal = (
            "met" if self.code_agreement and self.code_agreement[0] >= self.code_agreement_goal else "not met"
        )
        return (
            f"{self.examples} held-out examples: {accuracy}, embedding cosine {self.embedding_cosine:.4f}, "
            f"code agreement per level {codes} (level-1 goal {self.code_agreement_goal:.0%} {goal})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_drop": self.accuracy_drop, "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        """The measured figures of a stored record, judged by this module's thresholds (not the stored
        ones, which only document what the variant was held to)."""
        measured = ("data", "examples", "accuracy_fp32", "accuracy", "embedding_cosine", "code_agreement")
        return cls(**{k: d[k] for k in measured})


def measure_gate(
    reference: str | os.PathLike[str],
    reference_manifest: Manifest,
    variant_graphs: dict[str, Path],
    held_out: HeldOut,
) -> GateResult:
    """Run the float32 directory `reference` and the variant's graph files ("encoder", "tokenizer" ->
    path) on `held_out`, and compare them."""
    ref_root = Path(reference)
    outputs = {}
    for graph, path in variant_graphs.items():
        ref_path = ref_root / reference_manifest.files[graph].path
        outputs[graph] = (_run(ref_path, held_out.signals), _run(path, held_out.signals))

    (ref_enc, var_enc), (ref_tok, var_tok) = outputs["encoder"], outputs["tokenizer"]
    a, b = ref_enc["embedding"], var_enc["embedding"]  # (n, D)
    cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    same = ref_tok["codes"] == var_tok["codes"]  # (n, N, L)
    labelled = held_out.targets >= 0
    accuracy_fp32 = accuracy = None
    if "logits" in ref_enc and labelled.any():
        truth = held_out.targets[labelled]
        accuracy_fp32 = float((ref_enc["logits"][labelled].argmax(-1) == truth).mean())
        accuracy = float((var_enc["logits"][labelled].argmax(-1) == truth).mean())
    return GateResult(
        data=held_out.source,
        examples=len(held_out.signals),
        accuracy_fp32=accuracy_fp32,
        accuracy=accuracy,
        embedding_cosine=float(cosine.mean()),
        code_agreement=[float(v) for v in same.mean(axis=(0, 1))],
    )


def _run(path: Path, signals: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the graph at `path` on `signals`, in batches, concatenated (n, ...)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(names, {session.get_inputs()[0].name: batch}) for batch in _batches(signals)]
    return {name: np.concatenate([r[i] for r in runs]) for i, name in enumerate(names)}


def _batches(signals: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(signals), GATE_BATCH):
        yield signals[start : start + GATE_BATCH]
