"""End-to-end parity from file bytes (issue 39): each imported family (ViT, DeiT, BEiT, DINOv2, AST,
VideoMAE; seeded small random models written by transformers with their Hub family's processor
configuration) served over real HTTP answers every file of bridle.data.hf_parity's suite as transformers'
own processor + model does: every class probability within 1e-3, the same top-1. `python -m
bridle.data.hf_parity` prints the same comparison as a table."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bridle.model.manifest import read_manifest
from tests.live_server import Server, run_server

pytest.importorskip("transformers", reason="the parity tests need the `import` extra (transformers)")

from bridle.data.hf_models import load_model, make_folder
from bridle.data.hf_parity import (
    FAMILIES,
    PROB_TOLERANCE,
    Case,
    compare,
    image_cases,
    reference_windows,
    served_windows,
    table,
)
from bridle.importers.cli import app as import_app
from tests.importers.hf_export import EXPECTED_LABELS, import_and_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """family -> (transformers folder, model directory through bridle-import hf and bridle-export)."""
    root = tmp_path_factory.mktemp("hf-parity")
    return {f: (folder := make_folder(f, root, seed=20 + i), import_and_export(folder, root)) for i, f in
            enumerate(FAMILIES)}  # fmt: skip


@pytest.fixture(scope="module")
def server(built: dict[str, tuple[Path, Path]]) -> Iterator[Server]:
    yield from run_server([model_dir for _, model_dir in built.values()], ready_within=60, timeout=60)


def _classify(server: Server, name: str, case: Case) -> dict[str, Any]:
    files = {"file": (case.name, case.data, case.content_type)}
    r = server.client.post("/classify", params={"model": name, "top_k": 5}, files=files)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_served_probabilities_are_transformers(
    family: str, built: dict[str, tuple[Path, Path]], server: Server
) -> None:
    folder, model_dir = built[family]
    manifest = read_manifest(model_dir)
    rows, _ = compare(
        [family],
        {family: folder},
        {family: manifest.name},
        {family: float(manifest.input.window_seconds or 0.0)},
        lambda name, case: _classify(server, name, case),
    )
    print("\n" + table(rows))
    assert sum(r.files for r in rows) >= 4
    for row in rows:
        assert row.max_diff <= PROB_TOLERANCE, table(rows)
        assert row.top1_differs == 0, table(rows)
    if family == "ast":  # shorter and longer than the window, several windows among them
        assert any(r.windows > r.files for r in rows) and any(", 0." in r.kind for r in rows)
    if family == "videomae":
        assert any(r.windows > r.files for r in rows)


def test_the_suite_sees_another_geometry(built: dict[str, tuple[Path, Path]], server: Server) -> None:
    """The comparison can fail: DeiT served as the project's own geometry (shorter side 32, bicubic, no
    256 -> 224 margin) would differ from transformers beyond the tolerance on these photographs."""
    import transformers as T

    folder, model_dir = built["deit"]
    model = load_model(folder)
    proc = T.AutoImageProcessor.from_pretrained(folder)
    worst = 0.0
    for case in image_cases()[:5]:
        served, _ = served_windows(_classify(server, model_dir.name, case), EXPECTED_LABELS)
        image = T.image_utils.load_image(Image.open(io.BytesIO(case.data)))
        other = proc(image, size={"shortest_edge": 32}, return_tensors="pt")  # no crop margin
        with torch.no_grad():
            logits = model(**other).logits.numpy()[0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        worst = max(worst, float(np.abs(served[0] - probs).max()))
        assert np.abs(served[0] - reference_windows("deit", folder, model, case, [(0, 0)])[0]).max() <= 1e-5
    assert worst > PROB_TOLERANCE, worst


def test_features_show_the_processors_crop(built: dict[str, tuple[Path, Path]], server: Server) -> None:
    """/features (what the page draws) is the processor's own pixel_values: DeiT's 36 x 36 squash and
    32 x 32 centre crop of a 500 x 375 photograph."""
    import transformers as T

    folder, model_dir = built["deit"]
    case = image_cases()[0]
    r = server.client.post(
        "/features",
        params={"model": model_dir.name},
        files={"file": (case.name, case.data, case.content_type)},
    )
    assert r.status_code == 200, r.text
    f = r.json()["results"][0]["features"]
    got = np.frombuffer(base64.b64decode(f["data"]), "<f4").reshape(f["shape"])  # (1, 3, 32, 32)
    proc = T.AutoImageProcessor.from_pretrained(folder)
    image = T.image_utils.load_image(Image.open(io.BytesIO(case.data)))
    want = proc(image, return_tensors="np")["pixel_values"]  # (1, 3, 32, 32)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def test_the_manifest_records_the_processor(built: dict[str, tuple[Path, Path]]) -> None:
    manifest = json.loads((built["deit"][1] / "manifest.json").read_text())
    assert manifest["input"]["processing"] == {
        "resize": "squash", "size": [36, 36], "resample": "bicubic", "crop": [32, 32], "convert_rgb": False,
        "rescale_factor": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "source": "preprocessor_config.json (DeiTImageProcessor)",
    }  # fmt: skip
    dinov2 = json.loads((built["dinov2"][1] / "manifest.json").read_text())["input"]["processing"]
    assert (dinov2["resize"], dinov2["size"], dinov2["convert_rgb"]) == ("shortest_edge", [36], True)
    video = json.loads((built["videomae"][1] / "manifest.json").read_text())["input"]
    assert video["frame_sampling"] == "floor" and video["processing"]["resample"] == "bilinear"
    assert json.loads((built["ast"][1] / "manifest.json").read_text())["input"]["pad"] == "fbank"
    bundled = json.loads(Path("models/image-digits/manifest.json").read_text())["input"]
    assert not {"processing", "frame_sampling", "pad"} & set(bundled)  # older manifests: as before


def test_a_folder_without_a_processor_gets_its_familys_default(tmp_path: Path) -> None:
    folder = make_folder("deit", tmp_path, seed=1)
    (folder / "preprocessor_config.json").unlink()
    run = CliRunner().invoke(import_app, ["hf", "--checkpoint", str(folder), "--out", str(tmp_path / "s")])
    assert run.exit_code == 0, run.output
    assert (
        "preprocessing: the deit family's default (the processor of "
        "facebook/deit-base-distilled-patch16-224, at 32 px) (DeiTImageProcessor): "
        "resize to 36 x 36 (bicubic), centre crop 32 x 32" in run.output
    ), run.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": {"shortest_edge": 36, "longest_edge": 64}}, "size .* is not supported"),
        (
            {"do_center_crop": False, "size": {"height": 32, "width": 40}},
            r"images are \(32, 40\) .*not a square",
        ),
        ({"image_processor_type": "ConvNextImageProcessor"}, "names the processor 'ConvNextImageProcessor'"),
        ({"resample": 9}, "resample 9 must be one of PIL's filters"),
        ({"do_resize": False}, "do_resize false is not supported"),
    ],
)
def test_a_processor_that_cannot_be_matched_is_refused(change: dict, message: str, tmp_path: Path) -> None:
    folder = make_folder("deit", tmp_path, seed=1)
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    run = CliRunner().invoke(import_app, ["hf", "--checkpoint", str(folder), "--out", str(tmp_path / "s")])
    assert run.exit_code == 1
    assert re.search(message, run.output), run.output
