"""Servable checkpoints: the networks a trained model serves, saved as safetensors + JSON.

A servable checkpoint is a directory with

- `weights.safetensors`: the state of the encoder E, the tokenizer T and the optional classifier head,
  keys prefixed `encoder.`, `tokenizer.`, `classifier.` (buffers included: the quantizer's codebooks
  are buffers);
- `config.json`: {"model": ModelConfig.to_dict(), "labels", "tokenizer_kind", "num_classes",
  "provenance"}, and "label_ids" (an id per label, e.g. AudioSet mids beside display names) when the
  labels have ids; a checkpoint without it reads as one whose labels are their own ids.

Directories and single files are written atomically (written beside the target, fsynced, renamed into
place), so an interrupted save never leaves a half-written checkpoint. Training uses the same helpers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bridle.model.atomic import write_directory_atomically
from bridle.model.beats import BeatsEncoder, build_beats_networks
from bridle.model.classifier import ClassifierHead
from bridle.model.config import ModelConfig
from bridle.model.encoder import Encoder
from bridle.model.errors import BridleError
from bridle.model.hf_vit import HFEncoder, build_hf_head
from bridle.model.tokenizer import RandomProjectionTokenizer, Tokenizer, fit_codebooks

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
TokenizerKind = Literal["random", "trained"]
TOKENIZER_KINDS: tuple[str, ...] = ("random", "trained")
PRIMING_BATCH = 8  # random inputs that seed a fresh tokenizer's k-means codebooks


class CheckpointError(BridleError, ValueError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


@dataclass
class Servable:
    """What a model directory is exported from: E, T, an optional classifier head and their metadata."""

    config: ModelConfig
    encoder: Encoder | BeatsEncoder | HFEncoder
    tokenizer: nn.Module  # Tokenizer, RandomProjectionTokenizer or BeatsTokenizer
    classifier: nn.Module | None = None  # ClassifierHead; a plain Linear for BEATs; hf_vit's head
    labels: list[str] = field(default_factory=list)
    tokenizer_kind: TokenizerKind = "trained"
    provenance: dict[str, Any] = field(default_factory=dict)
    label_ids: list[str] | None = None  # an id per label (AudioSet mids), or None

    def __post_init__(self) -> None:
        if self.label_ids is not None and (
            len(self.label_ids) != len(self.labels)
            or not all(isinstance(x, str) and x for x in self.label_ids)
        ):
            raise CheckpointError(
                f"label_ids must be a non-empty string per label ({len(self.labels)}), "
                f"got {len(self.label_ids)}"
            )
        if self.tokenizer_kind not in TOKENIZER_KINDS:
            raise CheckpointError(
                f"tokenizer_kind must be one of {TOKENIZER_KINDS}, got {self.tokenizer_kind!r}"
            )
        if (self.classifier is None) != (not self.labels):
            raise CheckpointError("a classifier head needs labels, and labels need a classifier head")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def modules(self) -> dict[str, nn.Module]:
        """The networks by their key prefix in `weights.safetensors`."""
        parts: dict[str, nn.Module] = {"encoder": self.encoder, "tokenizer": self.tokenizer}
        if self.classifier is not None:
            parts["classifier"] = self.classifier
        return parts

    def eval(self) -> Servable:
        for module in self.modules().values():
            module.eval()
        return self


def build_servable(
    config: ModelConfig,
    labels: Sequence[str] = (),
    tokenizer_kind: TokenizerKind = "trained",
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
    label_ids: Sequence[str] | None = None,
) -> Servable:
    """Fresh (untrained) networks for `config`, seeded, tokenizer codebooks initialised; a classifier
    head when `labels` are given. For tests, micro exports and benchmarks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids = None if label_ids is None else list(label_ids)
        servable = _build_modules(config, list(labels), tokenizer_kind, provenance or {}, ids)
        _init_codebooks(servable)
        return servable.eval()


def _init_codebooks(servable: Servable, batch: int = PRIMING_BATCH) -> None:
    """Give a fresh tokenizer usable codebooks: k-means-initialised quantizers start empty and refuse to
    run, so they are fitted on a random model input (as on the first training batch)."""
    cfg = servable.config
    shape = cfg.input.model_input_shape()  # audio (1, frames, mel), image (3, S, S), video (3, T, S, S)
    fit_codebooks(servable.tokenizer, torch.randn(batch, *shape))


def _build_modules(
    config: ModelConfig,
    labels: list[str],
    tokenizer_kind: str,
    provenance: dict[str, Any],
    label_ids: list[str] | None = None,
) -> Servable:
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise CheckpointError(f"tokenizer_kind must be one of {TOKENIZER_KINDS}, got {tokenizer_kind!r}")
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"labels must be distinct, got {labels}")
    if config.beats is not None:  # an imported BEATs model
        # its tokenizer: BEATs' own (imported, `beats.tokenizer` set), a BRIDLE `Tokenizer` distilled from
        # its encoder (`bridle-train tokenizer`: trained, no `beats.tokenizer`), or a random projection
        encoder, beats_tokenizer, classifier = build_beats_networks(
            config,
            len(labels),
            trained_tokenizer=tokenizer_kind == "trained" and config.beats.tokenizer is not None,
        )
        tokenizer = beats_tokenizer or (
            Tokenizer(config) if tokenizer_kind == "trained" else RandomProjectionTokenizer(config)
        )
    elif config.hf is not None:  # an imported Hugging Face model: its own encoder and head, a BRIDLE T
        tokenizer_cls = RandomProjectionTokenizer if tokenizer_kind == "random" else Tokenizer
        encoder, tokenizer = HFEncoder(config), tokenizer_cls(config)
        classifier = build_hf_head(config, len(labels)) if labels else None
    else:
        tokenizer_cls = RandomProjectionTokenizer if tokenizer_kind == "random" else Tokenizer
        encoder, tokenizer = Encoder(config), tokenizer_cls(config)
        classifier = ClassifierHead(config.encoder.dim, len(labels)) if labels else None
    return Servable(
        config=config,
        encoder=encoder,
        tokenizer=tokenizer,
        classifier=classifier,
        labels=labels,
        tokenizer_kind=tokenizer_kind,  # type: ignore[arg-type]
        provenance=dict(provenance),
        label_ids=label_ids,
    )


# ---- saving -------------------------------------------------------------------------------------


def save_servable(directory: str | os.PathLike[str], servable: Servable) -> Path:
    """Write `weights.safetensors` + `config.json` into `directory` atomically; returns the directory.

    An existing checkpoint at `directory` is replaced only once the new one is complete.
    """
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in servable.modules().items():
        for key, value in module.state_dict().items():
            # safetensors refuses shared or strided storage: store an own contiguous copy of each
            tensors[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous().clone()
    meta = {
        "model": servable.config.to_dict(),
        "labels": list(servable.labels),
        "tokenizer_kind": servable.tokenizer_kind,
        "num_classes": servable.num_classes,
        "provenance": servable.provenance,
    }
    if servable.label_ids is not None:
        meta["label_ids"] = list(servable.label_ids)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return write_directory_atomically(directory, write)


# ---- loading ------------------------------------------------------------------------------------


def load_servable(directory: str | os.PathLike[str]) -> Servable:
    """Read a checkpoint written by `save_servable`; the networks come back in eval mode."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise CheckpointError(f"{str(root)!r} is not a servable checkpoint: {name} is missing")
    try:
        meta = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        config = ModelConfig.from_dict(meta["model"])
        labels = [str(x) for x in meta.get("labels", [])]
        tokenizer_kind = meta.get("tokenizer_kind", "trained")
        provenance = dict(meta.get("provenance") or {})
        label_ids = None if meta.get("label_ids") is None else [str(x) for x in meta["label_ids"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{root / CONFIG_FILE} is invalid: {e!r}") from e
    if meta.get("num_classes", len(labels)) != len(labels):
        raise CheckpointError(
            f"{root / CONFIG_FILE}: num_classes {meta['num_classes']} != {len(labels)} labels"
        )
    try:
        tensors = load_file(str(root / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{root / WEIGHTS_FILE} is corrupt or unreadable: {e}") from e

    try:
        servable = _build_modules(config, labels, tokenizer_kind, provenance, label_ids)
    except CheckpointError as e:
        raise CheckpointError(f"{root / CONFIG_FILE}: {e}") from e
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        groups.setdefault(prefix, {})[name] = value
    modules = servable.modules()
    unknown = set(groups) - set(modules)
    if unknown:
        raise CheckpointError(f"{root / WEIGHTS_FILE} holds weights of unknown parts {sorted(unknown)}")
    for prefix, module in modules.items():
        try:
            module.load_state_dict(groups.get(prefix, {}), strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"{root / WEIGHTS_FILE}: the {prefix} weights do not match the config: {e}"
            ) from e
    return servable.eval()
