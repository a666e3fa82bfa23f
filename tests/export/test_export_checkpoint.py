"""Servable checkpoints: exact round trip, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_cases import LABELS
from safetensors.torch import load_file

import bridle.model.checkpoint as checkpoint
from bridle.export.verify import sample_inputs
from bridle.model.atomic import atomic_write_bytes, write_directory_atomically
from bridle.model.checkpoint import CheckpointError, build_servable, load_servable, save_servable
from bridle.model.config import preset
from bridle.model.graphs import EncoderGraph, TokenizerGraph


def _outputs(servable) -> list[torch.Tensor]:
    x = torch.from_numpy(sample_inputs(servable.config, 2))
    with torch.no_grad():
        return [*EncoderGraph(servable)(x), *TokenizerGraph(servable)(x)]


@pytest.mark.parametrize(("name", "kind"), [("micro-audio", "trained"), ("micro-image", "random")])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str, kind: str) -> None:
    servable = build_servable(
        preset(name), labels=LABELS, tokenizer_kind=kind, seed=3, provenance={"step": 9}
    )
    directory = save_servable(tmp_path / "ckpt", servable)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "weights.safetensors"]

    keys = set(load_file(str(directory / "weights.safetensors")))
    expected = {f"{prefix}.{k}" for prefix, m in servable.modules().items() for k in m.state_dict()}
    assert keys == expected
    assert {k.split(".")[0] for k in keys} == {"encoder", "tokenizer", "classifier"}
    meta = json.loads((directory / "config.json").read_text())
    assert meta["num_classes"] == 3 and meta["labels"] == LABELS and meta["tokenizer_kind"] == kind

    back = load_servable(directory)
    assert back.config == servable.config
    assert (back.labels, back.tokenizer_kind, back.provenance) == (LABELS, kind, {"step": 9})
    assert not back.encoder.training and not back.tokenizer.training
    for prefix, module in servable.modules().items():
        state = back.modules()[prefix].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(state[key], value), f"{prefix}.{key} changed in the round trip"
    for a, b in zip(_outputs(servable), _outputs(back), strict=True):
        assert torch.equal(a, b)


def test_without_classifier(tmp_path: Path) -> None:
    servable = build_servable(preset("micro-image"))
    back = load_servable(save_servable(tmp_path / "c", servable))
    assert back.classifier is None and back.labels == [] and back.num_classes == 0


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_servable(preset("micro-image"), seed=1).encoder.state_dict()
    b = build_servable(preset("micro-image"), seed=1).encoder.state_dict()
    c = build_servable(preset("micro-image"), seed=2).encoder.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupted_save_leaves_no_partial_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servable = build_servable(preset("micro-image"), labels=LABELS)
    target = tmp_path / "ckpt"

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_servable(target, servable)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory

    # over an existing checkpoint, the previous version survives intact
    monkeypatch.undo()
    save_servable(target, servable)
    monkeypatch.setattr(checkpoint, "save_file", crash)
    other = build_servable(preset("micro-image"), labels=LABELS, seed=5)
    with pytest.raises(OSError):
        save_servable(target, other)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    for a, b in zip(_outputs(servable), _outputs(load_servable(target)), strict=True):
        assert torch.equal(a, b)


def test_save_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    save_servable(target, build_servable(preset("micro-image"), seed=1))
    new = build_servable(preset("micro-image"), labels=LABELS, seed=2)
    save_servable(target, new)
    assert load_servable(target).labels == LABELS
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_write_bytes(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "sub" / "state.json", b"new")
    assert path.read_bytes() == b"new"
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a service running as another user


def test_written_directories_are_readable_by_others(tmp_path: Path) -> None:
    directory = write_directory_atomically(tmp_path / "d", lambda tmp: (tmp / "x").write_bytes(b"1"))
    assert directory.stat().st_mode & 0o777 == 0o755


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_servable(tmp_path / "missing")
    directory = save_servable(tmp_path / "c", build_servable(preset("micro-image"), labels=LABELS))
    weights = directory / "weights.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_servable(directory)

    weights.unlink()
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is missing"):
        load_servable(directory)

    weights.write_bytes(data)
    meta = json.loads((directory / "config.json").read_text())
    meta["model"] = preset("micro-audio").to_dict()  # weights of another architecture
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_servable(directory)

    (directory / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"config\.json is invalid"):
        load_servable(directory)
