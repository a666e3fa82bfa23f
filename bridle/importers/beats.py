"""Import Microsoft's BEATs checkpoints (microsoft/unilm `beats/`, MIT licence) as a servable checkpoint.

An upstream checkpoint is a `torch.save`d dict: `cfg` (the BEATsConfig / TokenizersConfig fields that
differ from upstream's defaults), `model` (the state dict) and, for a fine-tuned model, `label_dict`
(class index -> label name: for AudioSet heads, the class's mid). With AudioSet's
`class_labels_indices.csv` (bridle/importers/audioset.py) the labels become its display names and the mids
are kept beside them as label ids: head row r is named by the CSV's row for the mid `label_dict[r]`,
whatever order the CSV and the label_dict each list the classes in. It is read with
`torch.load(weights_only=True)`, so nothing in it is executed; nothing is downloaded. Every key is
accounted for: a missing, unknown or mis-shaped tensor, or a config value `bridle/model/beats.py` does not
implement, stops the import with a message that names it.

Upstream -> bridle.model.beats names (`L` = layer):

    patch_embedding              -> backbone.patch_embed        layer_norm         -> backbone.patch_norm
    post_extract_proj            -> backbone.patch_proj         encoder.layer_norm -> backbone.norm
    encoder.pos_conv.0.weight_g/_v -> backbone.pos_conv.weight (weight norm folded: g v / |v| per tap)
    encoder.layers.0.self_attn.relative_attention_bias -> backbone.position_bias (one table for all layers)
    encoder.layers.L.self_attn.{q,k,v}_proj -> backbone.blocks.L.attn.qkv (concatenated)
    encoder.layers.L.self_attn.out_proj     -> backbone.blocks.L.attn.proj
    encoder.layers.L.self_attn.grep_linear  -> backbone.blocks.L.attn.gate (8 outputs summed in 2 groups of 4)
    encoder.layers.L.self_attn.grep_a       -> backbone.blocks.L.attn.gate_scale
    encoder.layers.L.self_attn_layer_norm / final_layer_norm -> backbone.blocks.L.norm1 / norm2
    encoder.layers.L.fc1 / fc2              -> backbone.blocks.L.mlp.0 / mlp.2
    predictor                    -> classifier (BEATs averages per-token logits = the map of the mean token)
    quantize_layer.0 / .2        -> head.0 / head.2 (tokenizer)
    quantize.embedding.weight    -> quantizer.codebooks[0] (a one-level RQ; EMA statistics are dropped)
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from bridle.importers.audioset import ClassLabelsError, read_class_labels
from bridle.importers.families import Force, Out, importer_family
from bridle.model.beats import NUM_FRAMES, NUM_MEL_BINS, beats_audio_input, check_backbone
from bridle.model.checkpoint import Servable, build_servable, save_servable
from bridle.model.config import BeatsBackboneConfig, BeatsConfig, ModelConfig, QuantizerConfig, ViTConfig
from bridle.model.manifest import sha256_file

LICENCE = "MIT"
SOURCE = "microsoft/unilm beats/ (BEATs: Audio Pre-Training with Acoustic Tokenizers, Chen et al. 2022)"
# the quantizer's size in a model imported without its tokenizer (its codes: a random projection's)
RANDOM_QUANTIZER = QuantizerConfig(levels=1, codebook_size=1024, dim=256)
UNIT_TOLERANCE = 1e-3  # codewords must be unit vectors (BEATs re-normalises them after every update)

# upstream's BEATsConfig and TokenizersConfig defaults: a checkpoint's `cfg` overrides these
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False,
    "deep_norm": False, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
    "relative_position_embedding": False, "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": False,
}  # fmt: skip
MODEL_DEFAULTS = {
    **UPSTREAM_DEFAULTS,
    "finetuned_model": False,
    "predictor_dropout": 0.1,
    "predictor_class": 527,
}
TOKENIZER_DEFAULTS = {**UPSTREAM_DEFAULTS, "quant_n": 1024, "quant_dim": 256}


class BeatsImportError(ValueError):
    """An upstream checkpoint cannot be imported; the message says what is wrong with it."""


@dataclass(frozen=True)
class Backbone:
    """A checkpoint's transformer, in this project's terms."""

    vit: ViTConfig
    beats: BeatsBackboneConfig
    patch_size: int


@dataclass(frozen=True)
class Upstream:
    """One upstream checkpoint file, read."""

    path: Path
    cfg: dict[str, Any]
    state: dict[str, torch.Tensor]
    label_dict: Any

    def provenance(self) -> dict[str, str]:
        return {"file": self.path.name, "sha256": sha256_file(self.path)}


# ---- reading ---------------------------------------------------------------------------------------


def read_upstream(path: str | os.PathLike[str], what: str) -> Upstream:
    """Load `path` with weights_only=True and check its top-level layout."""
    path = Path(path)
    if not path.is_file():
        raise BeatsImportError(f"{what} checkpoint {str(path)!r} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BeatsImportError(
            f"{what} checkpoint {str(path)!r} is not a readable PyTorch checkpoint of plain tensors "
            f"and values (torch.load with weights_only=True): {first}"
        ) from e
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("cfg"), dict)
        or not isinstance(raw.get("model"), dict)
    ):
        got = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise BeatsImportError(
            f"{what} checkpoint {str(path)!r} is not in BEATs' layout: expected a dict with 'cfg' (a dict) "
            f"and 'model' (a state dict), got {got}"
        )
    state = raw["model"]
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BeatsImportError(
            f"{what} checkpoint {path.name}: 'model' entries that are not tensors: {bad[:5]}"
        )
    return Upstream(path, dict(raw["cfg"]), dict(state), raw.get("label_dict"))


def _settings(cfg: dict[str, Any], defaults: dict[str, Any], what: str) -> dict[str, Any]:
    """`cfg` over `defaults`, refusing unknown fields and values of the wrong type."""
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise BeatsImportError(f"{what} cfg has fields this importer does not know: {unknown}")
    merged = {**defaults, **cfg}
    for key, default in defaults.items():
        value = merged[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise BeatsImportError(
                f"{what} cfg field {key!r} must be {type(default).__name__}, got {value!r}"
            )
    return merged


def backbone_config(s: dict[str, Any], what: str) -> Backbone:
    """The transformer settings of merged upstream settings `s`; refuses what beats.py does not implement."""
    problems = []
    patch = s["input_patch_size"]
    if patch < 1 or NUM_MEL_BINS % patch:
        problems.append(f"input_patch_size {patch} must be a positive divisor of {NUM_MEL_BINS} mel bins")
    if s["activation_fn"] != "gelu":
        problems.append(f"activation_fn {s['activation_fn']!r} is not supported (only 'gelu')")
    if s["layer_norm_first"]:
        problems.append(
            "layer_norm_first=True (pre-LN blocks) is not supported (BEATs' released models are post-LN)"
        )
    if s["gru_rel_pos"] and not s["relative_position_embedding"]:
        problems.append("gru_rel_pos=True without relative_position_embedding is not supported")
    dim, heads, ffn, layers = (
        s["encoder_embed_dim"], s["encoder_attention_heads"], s["encoder_ffn_embed_dim"], s["encoder_layers"]
    )  # fmt: skip
    if min(dim, heads, ffn, layers, s["embed_dim"]) < 1:
        problems.append("encoder_embed_dim, encoder_attention_heads, encoder_ffn_embed_dim, encoder_layers "
                        "and embed_dim must be positive")  # fmt: skip
    elif int(dim * (ffn / dim)) != ffn:
        problems.append(f"encoder_ffn_embed_dim {ffn} is not a whole multiple ratio of {dim}")
    if problems:
        raise BeatsImportError(f"{what} cfg is not supported: " + "; ".join(problems))
    beats = BeatsBackboneConfig(
        embed_dim=s["embed_dim"],
        conv_bias=s["conv_bias"],
        conv_pos=s["conv_pos"],
        conv_pos_groups=s["conv_pos_groups"],
        relative_position=s["relative_position_embedding"],
        num_buckets=s["num_buckets"],
        max_distance=s["max_distance"],
        gated_position_bias=s["gru_rel_pos"],
        deep_norm=s["deep_norm"],
    )
    vit = ViTConfig(dim=dim, depth=layers, heads=heads, mlp_ratio=ffn / dim)
    try:
        check_backbone(vit, beats)
    except ValueError as e:
        raise BeatsImportError(f"{what} cfg is not supported: {e}") from None
    return Backbone(vit, beats, patch)


# ---- the state dict ------------------------------------------------------------------------------


Shapes = dict[str, tuple[int, ...]]


def expected_backbone_shapes(b: Backbone) -> tuple[Shapes, Shapes]:
    """Upstream key -> shape of every tensor a backbone must have, and the keys it may have besides
    (the shared bias table repeated under layers 1.., as `state_dict()` writes it)."""
    d, e, h, p = b.vit.dim, b.beats.embed_dim, b.vit.heads, b.patch_size
    ffn = int(b.vit.dim * b.vit.mlp_ratio)
    k = b.beats.conv_pos
    shapes: Shapes = {
        "patch_embedding.weight": (e, 1, p, p),
        "layer_norm.weight": (e,),
        "layer_norm.bias": (e,),
        "encoder.pos_conv.0.weight_g": (1, 1, k),
        "encoder.pos_conv.0.weight_v": (d, d // b.beats.conv_pos_groups, k),
        "encoder.pos_conv.0.bias": (d,),
        "encoder.layer_norm.weight": (d,),
        "encoder.layer_norm.bias": (d,),
    }
    if b.beats.conv_bias:
        shapes["patch_embedding.bias"] = (e,)
    if e != d:
        shapes["post_extract_proj.weight"] = (d, e)
        shapes["post_extract_proj.bias"] = (d,)
    optional: Shapes = {}
    for i in range(b.vit.depth):
        layer = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}self_attn.{name}.weight"] = (d, d)
            shapes[f"{layer}self_attn.{name}.bias"] = (d,)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{layer}{name}.weight"] = (d,)
            shapes[f"{layer}{name}.bias"] = (d,)
        shapes.update({
            f"{layer}fc1.weight": (ffn, d), f"{layer}fc1.bias": (ffn,),
            f"{layer}fc2.weight": (d, ffn), f"{layer}fc2.bias": (d,),
        })  # fmt: skip
        if b.beats.relative_position:
            table = shapes if i == 0 else optional
            table[f"{layer}self_attn.relative_attention_bias.weight"] = (b.beats.num_buckets, h)
        if b.beats.gated_position_bias:
            shapes[f"{layer}self_attn.grep_linear.weight"] = (8, d // h)
            shapes[f"{layer}self_attn.grep_linear.bias"] = (8,)
            shapes[f"{layer}self_attn.grep_a"] = (1, h, 1, 1)
    return shapes, optional


def check_keys(state: Mapping[str, torch.Tensor], shapes: Shapes, optional: Shapes, what: str) -> None:
    """Refuse missing, unknown and mis-shaped tensors, naming (up to 10 of) each."""
    missing = [k for k in shapes if k not in state]
    unknown = [k for k in state if k not in shapes and k not in optional]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {want})"
        for k, want in {**shapes, **optional}.items()
        if k in state and tuple(state[k].shape) != want
    ]
    problems = []
    for label, keys in (("missing", missing), ("unknown", unknown), ("mis-shaped", wrong)):
        if keys:
            more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
            problems.append(f"{len(keys)} {label} tensor(s): {', '.join(keys[:10])}{more}")
    if problems:
        raise BeatsImportError(f"{what} state dict does not match its cfg: " + "; ".join(problems))
    floats = [k for k in shapes if not state[k].is_floating_point()]
    if floats:
        raise BeatsImportError(f"{what} state dict: tensors that are not floating point: {floats[:10]}")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight_norm(dim=2): weight[:, :, t] = g[t] v[:, :, t] / |v[:, :, t]| (norm over all but the tap)."""
    norm = v.double().pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # (1, 1, K)
    if bool((norm == 0).any()):
        raise BeatsImportError(
            "encoder.pos_conv.0.weight_v has an all-zero tap: its weight norm is undefined"
        )
    return (g.double() * v.double() / norm).float()


def backbone_state(state: Mapping[str, torch.Tensor], b: Backbone, what: str) -> dict[str, torch.Tensor]:
    """Upstream backbone tensors -> `BeatsBackbone` state dict (keys without the `backbone.` prefix)."""
    out = {
        "patch_embed.weight": state["patch_embedding.weight"],
        "patch_norm.weight": state["layer_norm.weight"],
        "patch_norm.bias": state["layer_norm.bias"],
        "pos_conv.weight": fold_weight_norm(
            state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
        ),
        "pos_conv.bias": state["encoder.pos_conv.0.bias"],
        "norm.weight": state["encoder.layer_norm.weight"],
        "norm.bias": state["encoder.layer_norm.bias"],
    }
    if b.beats.conv_bias:
        out["patch_embed.bias"] = state["patch_embedding.bias"]
    if b.beats.embed_dim != b.vit.dim:
        out["patch_proj.weight"] = state["post_extract_proj.weight"]
        out["patch_proj.bias"] = state["post_extract_proj.bias"]
    if b.beats.relative_position:
        table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
        for i in range(1, b.vit.depth):
            copy = state.get(f"encoder.layers.{i}.self_attn.relative_attention_bias.weight")
            if copy is not None and not torch.equal(copy, table):
                raise BeatsImportError(
                    f"{what}: layer {i}'s relative_attention_bias differs from layer 0's (BEATs shares one)"
                )
        out["position_bias"] = table
    hd = b.vit.dim // b.vit.heads
    for i in range(b.vit.depth):
        up, ours = f"encoder.layers.{i}.", f"blocks.{i}."
        attn = up + "self_attn."
        for part in ("weight", "bias"):
            out[f"{ours}attn.qkv.{part}"] = torch.cat([state[f"{attn}{n}_proj.{part}"] for n in "qkv"])
            out[f"{ours}attn.proj.{part}"] = state[f"{attn}out_proj.{part}"]
            out[f"{ours}norm1.{part}"] = state[f"{up}self_attn_layer_norm.{part}"]
            out[f"{ours}norm2.{part}"] = state[f"{up}final_layer_norm.{part}"]
            out[f"{ours}mlp.0.{part}"] = state[f"{up}fc1.{part}"]
            out[f"{ours}mlp.2.{part}"] = state[f"{up}fc2.{part}"]
        if b.beats.gated_position_bias:
            # upstream sums the 8 gate outputs in two groups of 4 before the sigmoid: fold the sums in
            out[f"{ours}attn.gate.weight"] = (
                state[f"{attn}grep_linear.weight"].double().view(2, 4, hd).sum(1).float()
            )
            out[f"{ours}attn.gate.bias"] = state[f"{attn}grep_linear.bias"].double().view(2, 4).sum(1).float()
            out[f"{ours}attn.gate_scale"] = state[f"{attn}grep_a"]
    return {f"backbone.{k}": v.float() for k, v in out.items()}


def labels_of(label_dict: Any, num_classes: int, what: str) -> list[str]:
    """Label names in class-index order from upstream's `label_dict` (index -> name)."""
    if not isinstance(label_dict, dict):
        raise BeatsImportError(
            f"{what} is fine-tuned (finetuned_model=True) but has no 'label_dict' (class index -> label name)"
        )
    indices = list(label_dict)
    if not all(type(k) is int for k in indices) or sorted(indices) != list(range(num_classes)):
        raise BeatsImportError(
            f"{what} label_dict must map the class indices 0..{num_classes - 1} (predictor_class) to names, "
            f"got {len(label_dict)} keys"
        )
    labels = [label_dict[i] for i in range(num_classes)]
    if not all(isinstance(x, str) and x for x in labels):
        raise BeatsImportError(f"{what} label_dict values must be non-empty strings")
    if len(set(labels)) != len(labels):
        raise BeatsImportError(f"{what} label_dict names must be distinct")
    return labels


# ---- the import --------------------------------------------------------------------------------------


def class_names(
    labels_csv: str | os.PathLike[str], label_dict_labels: list[str], what: str
) -> tuple[list[str], list[str]]:
    """(display names, ids) of the head's classes: each row's mid (`label_dict[row]`) looked up in an
    `index,mid,display_name` CSV, whatever the CSV's row or index order (a released AudioSet head's
    label_dict is in an order of its own). A mid the CSV lacks is refused, named."""
    try:
        classes = read_class_labels(labels_csv)
    except ClassLabelsError as e:
        raise BeatsImportError(str(e)) from None
    name = Path(labels_csv).name
    by_mid = dict(zip(classes.ids, classes.names, strict=True))
    lacking = [(row, mid) for row, mid in enumerate(label_dict_labels) if mid not in by_mid]
    if lacking:
        row = lacking[0][0]
        listed = ", ".join(repr(m) for _, m in lacking[:5]) + (" ..." if len(lacking) > 5 else "")
        raise BeatsImportError(
            f"{name} lacks {len(lacking)} class id(s) of the label_dict of {what}: {listed} "
            f"(first at head row {row}); the CSV must name every mid of the head"
        )
    return [by_mid[mid] for mid in label_dict_labels], list(label_dict_labels)


def import_beats(
    checkpoint: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    num_frames: int = NUM_FRAMES,
    labels_csv: str | os.PathLike[str] | None = None,
) -> Servable:
    """A servable BEATs model from an upstream model checkpoint and, optionally, its tokenizer checkpoint.

    Without a tokenizer the servable gets a random-projection tokenizer (tokenizer_kind "random") so that
    the model directory still has its tokenizer graph; the manifest says which it is. With `labels_csv`
    (AudioSet's class_labels_indices.csv) the labels are its display names, the ids kept beside them.
    """
    model = read_upstream(checkpoint, "model")
    what = f"model checkpoint {model.path.name}"
    s = _settings(model.cfg, MODEL_DEFAULTS, what)
    enc = backbone_config(s, what)
    _check_model_keys(model, s, enc, what)
    labels, label_ids = _head_labels(model, s, labels_csv, what)
    if num_frames < enc.patch_size or num_frames % enc.patch_size:
        raise BeatsImportError(
            f"num_frames {num_frames} must be a positive multiple of the patch size {enc.patch_size}"
        )
    tok_upstream, tok, quantizer = (
        _checked_tokenizer(tokenizer, enc) if tokenizer is not None else (None, None, RANDOM_QUANTIZER)
    )
    config = ModelConfig(
        modality="audio",
        input=beats_audio_input(num_frames),
        patch_size=enc.patch_size,
        encoder=enc.vit,
        tokenizer=tok.vit if tok else enc.vit,
        quantizer=quantizer,
        classifier_activation="sigmoid",
        beats=BeatsConfig(encoder=enc.beats, tokenizer=tok.beats if tok else None),
    )
    provenance: dict[str, Any] = {
        "source": SOURCE,
        "licence": LICENCE,
        "imported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_checkpoint": model.provenance(),
        "tokenizer_checkpoint": tok_upstream.provenance() if tok_upstream else None,
    }
    servable = build_servable(
        config,
        labels,
        tokenizer_kind="trained" if tok else "random",
        provenance=provenance,
        label_ids=label_ids,
    )
    _load_weights(servable, model, enc, tok_upstream, tok, what)
    return servable.eval()


def _check_model_keys(model: Upstream, s: dict[str, Any], enc: Backbone, what: str) -> None:
    """Every tensor of the model checkpoint is there, with its shape (the head's with a fine-tuned one)."""
    shapes, optional = expected_backbone_shapes(enc)
    if s["finetuned_model"]:
        if s["predictor_class"] < 1:
            raise BeatsImportError(f"{what} cfg predictor_class must be positive, got {s['predictor_class']}")
        shapes["predictor.weight"] = (s["predictor_class"], enc.vit.dim)
        shapes["predictor.bias"] = (s["predictor_class"],)
    check_keys(model.state, shapes, optional, what)


def _head_labels(
    model: Upstream, s: dict[str, Any], labels_csv: str | os.PathLike[str] | None, what: str
) -> tuple[list[str], list[str] | None]:
    """(labels, label ids) of a fine-tuned model's head: its label_dict's names, or with `labels_csv` the
    CSV's display names and the mids beside them; ([], None) for a model without a head."""
    labels = labels_of(model.label_dict, s["predictor_class"], what) if s["finetuned_model"] else []
    if labels_csv is None:
        return labels, None
    if not s["finetuned_model"]:
        raise BeatsImportError(f"--labels names the classes of a head, and {what} has none (not fine-tuned)")
    return class_names(labels_csv, labels, what)


def _checked_tokenizer(
    tokenizer: str | os.PathLike[str], enc: Backbone
) -> tuple[Upstream, Backbone, QuantizerConfig]:
    """The tokenizer checkpoint, its transformer and its quantizer, checked: its patch size is the model's,
    its quantizer is sized, every tensor is there with its shape."""
    upstream = read_upstream(tokenizer, "tokenizer")
    what = f"tokenizer checkpoint {upstream.path.name}"
    ts = _settings(upstream.cfg, TOKENIZER_DEFAULTS, what)
    tok = backbone_config(ts, what)
    if tok.patch_size != enc.patch_size:
        raise BeatsImportError(
            f"{what} input_patch_size {tok.patch_size} differs from the model's {enc.patch_size}"
        )
    if ts["quant_n"] < 1 or ts["quant_dim"] < 1:
        raise BeatsImportError(f"{what} quant_n and quant_dim must be positive")
    quantizer = QuantizerConfig(levels=1, codebook_size=ts["quant_n"], dim=ts["quant_dim"])
    shapes, optional = expected_backbone_shapes(tok)
    n, qd, d = ts["quant_n"], ts["quant_dim"], tok.vit.dim
    shapes.update({
        "quantize_layer.0.weight": (d, d), "quantize_layer.0.bias": (d,),
        "quantize_layer.2.weight": (qd, d), "quantize_layer.2.bias": (qd,),
        "quantize.embedding.weight": (n, qd), "quantize.embedding.cluster_size": (n,),
        "quantize.embedding.embed_avg": (n, qd), "quantize.cluster_size": (n,),
        "quantize.embedding.initted": (1,),
    })  # fmt: skip
    check_keys(upstream.state, shapes, optional, what)
    return upstream, tok, quantizer


def _load_weights(
    servable: Servable,
    model: Upstream,
    enc: Backbone,
    tok_upstream: Upstream | None,
    tok: Backbone | None,
    what: str,
) -> None:
    """The converted upstream tensors into the servable's encoder, head and (when given) tokenizer."""
    _load(servable.encoder, backbone_state(model.state, enc, what), what)
    if servable.classifier is not None:
        _load(servable.classifier, {"weight": model.state["predictor.weight"].float(),
                                    "bias": model.state["predictor.bias"].float()}, what)  # fmt: skip
    if tok and tok_upstream:
        _load(
            servable.tokenizer,
            tokenizer_state(tok_upstream, tok),
            f"tokenizer checkpoint {tok_upstream.path.name}",
        )


def tokenizer_state(upstream: Upstream, b: Backbone) -> dict[str, torch.Tensor]:
    """Upstream tokenizer tensors -> `BeatsTokenizer` state dict."""
    what = f"tokenizer checkpoint {upstream.path.name}"
    state = upstream.state
    if not bool(state["quantize.embedding.initted"].bool().all()):
        raise BeatsImportError(
            f"{what}: its codebook was never initialised (quantize.embedding.initted is 0)"
        )
    codebook = state["quantize.embedding.weight"].double()  # (K, D)
    norms = codebook.norm(dim=-1)
    if not bool(((norms - 1).abs() <= UNIT_TOLERANCE).all()):
        worst = float((norms - 1).abs().max())
        raise BeatsImportError(
            f"{what}: codewords must be unit vectors (BEATs keeps them normalised); one is off by {worst:.3g}"
        )
    out = backbone_state(state, b, what)
    for i in (0, 2):
        out[f"head.{i}.weight"] = state[f"quantize_layer.{i}.weight"].float()
        out[f"head.{i}.bias"] = state[f"quantize_layer.{i}.bias"].float()
    k = codebook.shape[0]
    out["quantizer.codebooks"] = (codebook / norms[:, None]).float()[None]  # (1, K, D)
    out["quantizer.initialized"] = torch.ones(1, dtype=torch.bool)
    out["quantizer.frozen"] = torch.ones((), dtype=torch.bool)
    out["quantizer.unused_steps"] = torch.zeros(1, k, dtype=torch.long)
    return out


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a mapping bug, not a user error: the key checks above passed
        raise BeatsImportError(f"{what}: the converted weights do not fit the network: {e}") from e
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BeatsImportError(f"{what}: {name} holds non-finite values")


def write_import(
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    num_frames: int = NUM_FRAMES,
    labels_csv: str | os.PathLike[str] | None = None,
) -> Servable:
    """Import and save the servable checkpoint `out` (atomically, as training saves its own)."""
    servable = import_beats(checkpoint, tokenizer, num_frames, labels_csv)
    save_servable(out, servable)
    return servable


# ---- the command line ------------------------------------------------------------------------------------


@importer_family(
    "beats",
    "--checkpoint BEATs.pt [--tokenizer Tokenizer.pt] [--labels class_labels_indices.csv]\n"
    "                   --out DIR [--num-frames 992] [--force]",
    BeatsImportError,
)
def beats_command(
    checkpoint: Annotated[
        Path, typer.Option(help="BEATs model checkpoint (.pt) from microsoft/unilm beats/ (MIT licence)")
    ],
    out: Out,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="BEATs tokenizer checkpoint (.pt); without it /tokenize serves random-projection codes"
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="AudioSet's class_labels_indices.csv (index,mid,display_name; CC BY 4.0): labels become "
            "display names with the mids beside them; without it the labels are the checkpoint's ids"
        ),
    ] = None,
    num_frames: Annotated[
        int, typer.Option(help="fbank frames per window (992 = 9.935 s); a multiple of the patch size")
    ] = 992,
    force: Force = False,
) -> None:
    """Import a BEATs checkpoint (and its tokenizer) as a servable checkpoint in OUT."""
    servable = write_import(out, checkpoint, tokenizer, num_frames, labels)
    cfg = servable.config
    named = f", named by {labels.name}" if labels else ""
    typer.echo(
        f"wrote {out}: BEATs encoder {cfg.encoder.depth} x {cfg.encoder.dim}, "
        f"{len(servable.labels)} labels (sigmoid{named}), "
        f"tokenizer {servable.tokenizer_kind}"
        f" ({cfg.quantizer.codebook_size} codes), windows of {cfg.input.window_samples} samples"
    )
    if servable.tokenizer_kind == "random":
        typer.echo(
            "note: no --tokenizer: the model directory's codes come from a random-projection tokenizer"
        )
