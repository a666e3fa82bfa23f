"""Exported micro model directories: files, manifest vs the real graphs, dynamic batch, parity, verify
failures, and the CLI's refusals."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_cases import LABELS, MICRO_PRESETS, VIDEO_CLIP_SECONDS, micro_config
from typer.testing import CliRunner

import bridle.export.model_dir as model_dir_module
from bridle.export.cli import app
from bridle.export.model_dir import ExportError, export_model_dir
from bridle.export.onnx_graphs import tensor_spec
from bridle.export.verify import CODE_AGREEMENT, EMBEDDING_TOLERANCE, ort_session, sample_inputs, verify
from bridle.model.checkpoint import build_servable, load_servable
from bridle.model.config import preset
from bridle.model.graphs import EncoderGraph, TokenizerGraph
from bridle.model.manifest import read_manifest, sha256_file

ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "uint8": "tensor(uint8)"}


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_manifest_describes_the_model(exported, name: str) -> None:
    e = exported[name]
    assert sorted(p.name for p in e.model_dir.iterdir()) == [
        "encoder.onnx",
        "features.onnx",
        "manifest.json",
        "tokenizer.onnx",
    ]
    cfg = micro_config(name)
    m = read_manifest(e.model_dir)
    assert m.name == ("micro-img" if name == "micro-image" else e.model_dir.name)
    assert (m.modality, m.patch_grid, m.embedding_dim, m.opset) == (cfg.modality, list(cfg.grid), 32, 18)
    assert (m.quantizer.levels, m.quantizer.codebook_size, m.quantizer.dim) == (2, 16, 16)
    assert m.labels == LABELS and m.tokenizer_kind == "trained" and m.config() == cfg
    assert m.provenance["recipe"] == "test" and m.provenance["step"] == 7
    assert m.provenance["checkpoint"] == str(e.checkpoint.resolve())
    assert dt.datetime.fromisoformat(m.provenance["date"]).tzinfo is not None
    inp = m.input
    assert inp.name == "signal"
    if name == "micro-audio":
        samples = cfg.input.window_samples
        assert (inp.dtype, inp.shape, inp.sample_rate, inp.num_frames) == (
            "float32",
            ["batch", samples],
            16000,
            32,
        )
        assert inp.window_seconds == pytest.approx(samples / 16000) and m.grid_axes == ["time", "mel"]
    elif name == "micro-image":
        assert (inp.dtype, inp.shape, inp.image_size, inp.window_seconds) == (
            "uint8",
            ["batch", 3, 16, 16],
            16,
            None,
        )
        assert m.grid_axes == ["height", "width"]
    else:
        assert (inp.dtype, inp.shape, inp.clip_frames) == ("uint8", ["batch", 4, 3, 16, 16], 4)
        assert inp.window_seconds == VIDEO_CLIP_SECONDS == cfg.input.clip_seconds
        assert m.grid_axes == ["time", "height", "width"]


def _encoder_input(name: str) -> list[int]:
    """The shape of one example of the encoder's input (the preprocessing's output)."""
    inp = preset(name).input
    if name == "micro-audio":
        return [1, inp.num_frames, inp.num_mel_bins]
    if name == "micro-image":
        return [3, inp.image_size, inp.image_size]
    return [3, inp.num_frames, inp.image_size, inp.image_size]


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_manifest_shapes_are_the_graphs_shapes(exported, name: str) -> None:
    e = exported[name]
    m = read_manifest(e.model_dir)
    n, dim = preset(name).num_patches, 32
    expected = {
        "encoder": [
            ("patch_embeddings", "float32", ["batch", n, dim]),
            ("embedding", "float32", ["batch", dim]),
            ("logits", "float32", ["batch", 3]),
        ],
        "tokenizer": [("codes", "int64", ["batch", n, 2]), ("quantized", "float32", ["batch", n, 16])],
        "features": [("features", "float32", ["batch", *_encoder_input(name)])],
    }
    assert sorted(m.files) == sorted(expected)
    for key, graph in m.files.items():
        assert [(o.name, o.dtype, o.shape) for o in graph.outputs] == expected[key]
        assert [(i.name, i.dtype, i.shape) for i in graph.inputs] == [
            (m.input.name, m.input.dtype, m.input.shape)
        ]
        model = onnx.load(str(e.model_dir / graph.path))
        onnx.checker.check_model(model)
        assert model.ir_version <= 10 and model.opset_import[0].version == 18
        assert [tensor_spec(v) for v in model.graph.input] == graph.inputs
        assert [tensor_spec(v) for v in model.graph.output] == graph.outputs
        session = ort_session(e.model_dir / graph.path)
        for specs, args in ((graph.inputs, session.get_inputs()), (graph.outputs, session.get_outputs())):
            assert [(a.name, a.type, a.shape) for a in args] == [
                (s.name, ORT_TYPES[s.dtype], s.shape) for s in specs
            ]


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_dynamic_batch_matches_pytorch(exported, name: str) -> None:
    e = exported[name]
    servable = load_servable(e.checkpoint)
    encoder = ort_session(e.model_dir / "encoder.onnx")
    tokenizer = ort_session(e.model_dir / "tokenizer.onnx")
    for batch in (1, 3):
        signal = sample_inputs(servable.config, batch, seed=batch)
        with torch.no_grad():
            want_enc = [t.numpy() for t in EncoderGraph(servable)(torch.from_numpy(signal))]
            want_codes, want_q = (t.numpy() for t in TokenizerGraph(servable)(torch.from_numpy(signal)))
        got_enc = encoder.run(None, {"signal": signal})
        got_codes, got_q = tokenizer.run(None, {"signal": signal})
        for want, got in zip(want_enc, got_enc, strict=True):
            assert got.shape == want.shape and got.shape[0] == batch
            assert np.abs(got - want).max() <= EMBEDDING_TOLERANCE
        assert got_codes.dtype == np.int64 and got_codes.shape == (batch, preset(name).num_patches, 2)
        assert (got_codes == want_codes).mean() >= CODE_AGREEMENT
        assert np.abs(got_q - want_q).max() <= EMBEDDING_TOLERANCE


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_verify_reports_parity(exported, name: str) -> None:
    e = exported[name]
    report = verify(e.model_dir, e.checkpoint)
    assert report.ok, str(report)
    assert {"manifest", "parity: embedding", "parity: logits", "parity: codes"} <= {
        c.name for c in report.checks
    }
    assert report.figures["encoder.embedding max_abs_diff"] <= EMBEDDING_TOLERANCE
    assert report.figures["tokenizer.codes agreement"] >= CODE_AGREEMENT
    assert verify(e.model_dir).ok  # without a checkpoint: hashes, checker, ORT only


def _copy(exported, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported["micro-image"].model_dir, tmp_path / "model"))


def test_verify_fails_on_a_corrupt_graph(exported, tmp_path: Path) -> None:
    model = _copy(exported, tmp_path)
    graph = model / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    report = verify(model)
    assert not report.ok
    assert "sha256 mismatch for 'encoder.onnx'" in str(report)

    # even with the manifest's hash brought in line, the truncated graph does not load
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["encoder"]["sha256"] = sha256_file(graph)
    (model / "manifest.json").write_text(json.dumps(manifest))
    report = verify(model)
    assert [c.name for c in report.failures] == ["encoder: onnx"]
    assert "encoder.onnx is not a valid ONNX model" in report.failures[0].detail


def test_verify_fails_on_an_edited_manifest_hash(exported, tmp_path: Path) -> None:
    model = _copy(exported, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["tokenizer"]["sha256"] = "0" * 64
    (model / "manifest.json").write_text(json.dumps(manifest))
    report = verify(model)
    assert not report.ok and "sha256 mismatch for 'tokenizer.onnx'" in str(report)
    result = CliRunner().invoke(app, ["verify", str(model)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_verify_fails_on_other_weights(exported) -> None:
    e = exported["micro-image"]
    other = build_servable(preset("micro-image"), labels=LABELS, seed=99)
    report = verify(e.model_dir, other)
    assert not report.ok and "parity: embedding" in {c.name for c in report.failures}


def test_cli_verify_with_checkpoint(exported) -> None:
    e = exported["micro-audio"]
    result = CliRunner().invoke(
        app, ["verify", str(e.model_dir), "--checkpoint", str(e.checkpoint), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True


def test_failed_verification_writes_nothing(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # graphs of one set of weights exported under another's name: parity fails, the export must refuse
    source = exported["micro-image"].model_dir
    monkeypatch.setattr(
        model_dir_module, "export_graph", lambda g, x, path, opset: shutil.copy(source / path.name, path)
    )
    other = build_servable(preset("micro-image"), labels=LABELS, seed=99)
    with pytest.raises(ExportError, match="failed verification") as info:
        export_model_dir(other, tmp_path / "out")
    assert info.value.report is not None and not info.value.report.ok
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_bad_input(exported, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(exported["micro-image"].checkpoint), str(busy)])
    assert result.exit_code == 1 and "not empty" in result.output and "--force" in result.output
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    result = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_opset_23_exports_fused_attention_that_verifies(exported, tmp_path: Path, name: str) -> None:
    out = tmp_path / "opset23"
    if name == "micro-image":
        result = CliRunner().invoke(
            app, ["export", str(exported[name].checkpoint), str(out), "--opset", "23"]
        )
        assert result.exit_code == 0, result.output
    else:
        export_model_dir(exported[name].checkpoint, out, opset=23)
    manifest = read_manifest(out, check_hashes=True)
    assert manifest.opset == 23
    model = onnx.load(str(out / "encoder.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 23 and model.ir_version == 11  # the least IR for opset 23
    assert "Attention" in {n.op_type for n in model.graph.node}
    report = verify(out, load_servable(exported[name].checkpoint))
    assert report.ok, str(report)


def test_unsupported_opsets_are_refused(exported, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"opset 17 is not supported; choose 18\.\.23"):
        export_model_dir(exported["micro-audio"].checkpoint, tmp_path / "o", opset=17)
    result = CliRunner().invoke(
        app, ["export", str(exported["micro-audio"].checkpoint), str(tmp_path / "o"), "--opset", "99"]
    )
    assert result.exit_code == 1 and "opset 99 is not supported" in result.output
    assert not (tmp_path / "o").exists()
