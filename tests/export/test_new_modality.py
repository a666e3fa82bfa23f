"""A new modality is one spec: the toy "depth" modality (tests/toy_modality.py), registered here and
nowhere else, goes through the model, the export (graphs, verification, manifest), the runtime's windows
and a real ONNX Runtime session, the sniffing of an upload, the training data set, the shards and the
export gate, with no other edit to bridle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bridle.export.gate import load_held_out
from bridle.export.model_dir import ExportResult, export_model_dir
from bridle.model.checkpoint import build_servable
from bridle.model.config import ModelConfig, preset
from bridle.model.manifest import read_manifest
from bridle.model.media_sets import media_files
from bridle.model.modalities import Limits, ModalitySpec, modality_names, sniff_modality, spec_for
from bridle.runtime.windows import to_windows
from bridle.training.augment import AugmentError, build_augment
from bridle.training.data import MediaDataset
from bridle.training.recipe import RecipeError, recipe_from_dict
from bridle.training.shards import write_shards
from tests.live_server import run_server
from tests.toy_modality import DepthInput, depth_file, registered_depth

LABELS = ["far", "near"]


@pytest.fixture(scope="module")
def depth() -> Iterator[ModalitySpec]:
    with registered_depth() as spec:
        yield spec


@pytest.fixture(scope="module")
def config(depth: ModalitySpec) -> ModelConfig:
    return preset("micro-image").replace(modality="depth", input=DepthInput(size=16))


@pytest.fixture(scope="module")
def exported(config: ModelConfig, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """A micro depth model exported, with the exporter's verification (torch against ONNX Runtime)."""
    servable = build_servable(config, labels=LABELS, seed=0)
    out = tmp_path_factory.mktemp("depth") / "micro-depth"
    return export_model_dir(servable, out, name="micro-depth", run_verify=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Class sub-folders of depth maps, one of them not a depth map at all."""
    root = tmp_path / "depth-data"
    for i in range(6):
        (root / LABELS[i % 2]).mkdir(parents=True, exist_ok=True)
        (root / LABELS[i % 2] / f"{i}.npy").write_bytes(depth_file(i))
    (root / "near" / "broken.npy").write_bytes(b"\x93NUMPY not really")
    return root


def test_the_model_and_its_config_take_the_new_modality(config: ModelConfig) -> None:
    assert "depth" in modality_names()
    assert config.grid == (4, 4) and config.in_channels == 1 and config.patch_dim == 16
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_the_new_modality_exports_verifies_and_serves_through_the_runtime(exported: ExportResult) -> None:
    result = exported
    assert result.report is not None and result.report.ok, result.report  # torch and ONNX Runtime agree

    manifest = read_manifest(result.model_dir)
    assert (manifest.modality, manifest.grid_axes, manifest.patch_grid) == (
        "depth",
        ["height", "width"],
        [4, 4],
    )
    assert (manifest.input.dtype, manifest.input.shape, manifest.input.image_size) == (
        "float32",
        ["batch", 16, 16],
        16,
    )

    upload = depth_file(11)
    assert sniff_modality(upload, None) == "depth"
    assert sniff_modality(upload, "application/octet-stream") == "depth"
    windows = to_windows(manifest, upload, Limits(600.0, 10**7, 600.0))
    assert windows.signal.shape == (1, 16, 16) and windows.spans == [(None, None)]

    session = ort.InferenceSession(str(result.model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(["embedding", "logits"], {"signal": windows.signal})
    assert embedding.shape == (1, manifest.embedding_dim) and np.isfinite(embedding).all()
    assert logits.shape == (1, len(LABELS))
    assert spec_for(manifest.modality).reads == ("depth",)


def test_training_data_shards_and_the_gate_take_the_new_modality(
    config: ModelConfig, exported: ExportResult, folder: Path, tmp_path: Path
) -> None:
    assert len(media_files(folder, "depth")) == 7

    data = MediaDataset(folder, config, cache=True, random_crop=True)
    assert data.labels == LABELS and len(data.skipped) == 1  # the broken file, left out with its reason
    item, target = data[0]
    assert tuple(item.shape) == (16, 16) and item.dtype.is_floating_point and target in (0, 1)

    assert build_augment("depth", {}, config) is None
    with pytest.raises(AugmentError, match="no augmentation for 'depth' data"):
        build_augment("depth", {"flip_p": 0.5}, config)

    shards = write_shards(folder, tmp_path / "shards", "depth")
    assert (shards.modality, shards.count, shards.labels) == ("depth", 6, LABELS)

    held_out = load_held_out(folder, exported.manifest)
    assert held_out.signals.shape == (6, 16, 16) and sorted(held_out.targets.tolist()) == [0, 0, 0, 1, 1, 1]


def test_a_recipe_names_only_registered_modalities(depth: ModalitySpec) -> None:
    raw = {
        "name": "x",
        "model": {"preset": "micro-image"},
        "data": {"train": "t", "modality": "depth"},
        "stages": [{"kind": "pretrain", "steps": 1}],
    }
    assert recipe_from_dict(raw).data.modality == "depth"
    raw["data"]["modality"] = "smell"
    with pytest.raises(RecipeError, match=r"data.modality must be audio, image, video or depth, got 'smell'"):
        recipe_from_dict(raw)


def test_the_service_serves_the_new_modality(exported: ExportResult) -> None:
    """A real server (one process, so the test's registration holds) embeds, classifies and returns the
    features of a depth map told by its bytes, and refuses a sound for the depth model by name."""
    server = next(servers := run_server([exported.model_dir]))
    try:
        upload = {"file": ("d.npy", depth_file(12), "application/octet-stream")}
        embed = server.client.post("/embed", files=upload)
        assert embed.status_code == 200, embed.text
        (result,) = embed.json()["results"]
        assert (
            result["model"] == "micro-depth" and len(result["embedding"]) == exported.manifest.embedding_dim
        )

        classify = server.client.post("/classify", files=upload)
        assert classify.status_code == 200, classify.text
        assert {s["label"] for s in classify.json()["results"][0]["labels"]} <= set(LABELS)

        features = server.client.post("/features", files=upload)
        assert features.status_code == 200, features.text
        f = features.json()["results"][0]
        assert f["grid_axes"] == ["height", "width"] and f["features"]["shape"] == [1, 1, 16, 16]
        assert f["features"]["layout"] == spec_for("depth").features_layout

        sound = {"file": ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "audio/wav")}
        wrong = server.client.post("/embed", params={"model": "micro-depth"}, files=sound)
        assert wrong.status_code == 415 and wrong.json()["error"]["code"] == "wrong_modality", wrong.text
    finally:
        servers.close()
