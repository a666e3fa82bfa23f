"""`bridle-train tokenizer`: a BRIDLE tokenizer distilled from a servable's encoder (a micro BRIDLE image
model and an imported BEATs model), exported, and its codes read back from a real ONNX Runtime session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_media import write_audio, write_images
from typer.testing import CliRunner

from bridle.data.beats_files import LABEL_DICT, MODEL_CFG, NUM_FRAMES, make_model, save_upstream
from bridle.export.model_dir import export_model_dir
from bridle.export.verify import ort_session
from bridle.model.checkpoint import build_servable, load_servable, save_servable
from bridle.model.config import ModelConfig, preset
from bridle.model.media_sets import media_files
from bridle.model.preprocessing import build_preprocessor
from bridle.model.tokenizer import Tokenizer
from bridle.training.cli import app
from bridle.training.distill_tokenizer import REPORT_FILE, DistillSettings, distill_tokenizer, file_windows


def distil(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["tokenizer", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def micro_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A micro image servable built as the export tests build theirs, and a folder of 24 images."""
    root = tmp_path_factory.mktemp("distil-image")
    servable = save_servable(
        root / "servable", build_servable(preset("micro-image"), labels=["a", "b"], seed=3)
    )
    return servable, write_images(root / "images", per_class=12)


SETTINGS = DistillSettings(levels=3, codebook_size=8, steps=12, batch_size=8, seed=4)


@pytest.fixture(scope="module")
def distilled(micro_image: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`bridle-train tokenizer` run on the micro servable with SETTINGS -> (the new servable, its output)."""
    source, images = micro_image
    out = tmp_path_factory.mktemp("distilled") / "servable"
    s = SETTINGS
    code, output = distil(str(source), "--data", str(images), "--levels", str(s.levels), "--codebook-size",
                          str(s.codebook_size), "--steps", str(s.steps), "--batch-size", str(s.batch_size),
                          "--seed", str(s.seed), "--out", str(out))  # fmt: skip
    assert code == 0, output
    return out, output


def image_codes(tokenizer: torch.nn.Module, cfg: ModelConfig, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The torch tokenizer's codes (B, N, L) of every image in `data`, and the windows (B, 3, S, S) uint8."""
    windows = np.concatenate([file_windows(p, cfg) for p in media_files(data, "image")])
    with torch.no_grad():
        return tokenizer(build_preprocessor(cfg)(torch.from_numpy(windows))).codes.numpy(), windows


def test_distilled_tokenizer_is_served_by_the_exported_graph(
    micro_image: tuple[Path, Path], distilled: tuple[Path, str], tmp_path: Path
):
    (source, images), (out, output) = micro_image, distilled
    assert "level 3: usage" in output
    before, after = load_servable(source), load_servable(out)
    assert after.tokenizer_kind == "trained" and isinstance(after.tokenizer, Tokenizer)
    assert (after.config.quantizer.levels, after.config.quantizer.codebook_size) == (3, 8)
    assert after.labels == before.labels
    for part in ("encoder", "classifier"):  # copied unchanged
        old, new = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)

    report = json.loads((out / REPORT_FILE).read_text())
    assert len(report["split"]["held_out_files"]) == 2  # round(0.1 * 24)
    assert [lv["level"] for lv in report["held_out"]["levels"]] == [1, 2, 3]
    assert all(0 < lv["usage_rate"] <= 1 and lv["perplexity"] >= 1 for lv in report["held_out"]["levels"])

    model_dir = tmp_path / "model"
    export_model_dir(out, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["tokenizer_kind"] == "trained" and manifest["quantizer"]["levels"] == 3
    codes, windows = image_codes(after.tokenizer, after.config, images)
    served = ort_session(model_dir / "tokenizer.onnx").run(["codes"], {"signal": windows})[0]
    assert served.shape == (24, after.config.num_patches, 3)  # (B, N, L)
    np.testing.assert_array_equal(served, codes)


def test_one_seed_gives_identical_codes(micro_image: tuple[Path, Path], distilled: tuple[Path, str]):
    """The CLI's run and a second run with the same seed give the same tokenizer, codes and report."""
    (source, images), (out, _) = micro_image, distilled
    first = load_servable(out)
    second, report = distill_tokenizer(source, images, SETTINGS)
    codes = [image_codes(s.tokenizer, s.config, images)[0] for s in (first, second)]
    np.testing.assert_array_equal(codes[0], codes[1])
    assert all(len(np.unique(codes[0][..., level])) > 1 for level in range(3))  # not a constant code
    assert json.loads((out / REPORT_FILE).read_text())["held_out"] == report["held_out"]
    old, new = first.tokenizer.state_dict(), second.tokenizer.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_a_beats_import_gets_a_distilled_multi_level_tokenizer(tmp_path: Path):
    from bridle.importers.beats import write_import

    upstream = save_upstream(tmp_path / "BEATs.pt", make_model(), MODEL_CFG, label_dict=LABEL_DICT)
    source = tmp_path / "beats"
    write_import(source, upstream, None, NUM_FRAMES)  # no BEATs tokenizer: random-projection codes
    sounds = write_audio(tmp_path / "sounds", per_class=5)  # 1 s clips: two 0.655 s windows each
    out = tmp_path / "distilled"
    code, output = distil(str(source), "--data", str(sounds), "--levels", "2", "--codebook-size", "16",
                          "--code-dim", "16", "--estimator-depth", "1", "--steps", "8", "--batch-size", "8",
                          "--held-out", "0.2", "--out", str(out))  # fmt: skip
    assert code == 0, output
    after = load_servable(out)
    assert isinstance(after.tokenizer, Tokenizer) and after.tokenizer_kind == "trained"
    assert after.config.beats is not None and after.config.beats.tokenizer is None

    model_dir = tmp_path / "model"
    export_model_dir(out, model_dir)
    held = [sounds / f for f in json.loads((out / REPORT_FILE).read_text())["split"]["held_out_files"]]
    windows = np.concatenate([file_windows(p, after.config) for p in held])  # (W, samples) float32
    assert len(windows) == 4
    served = ort_session(model_dir / "tokenizer.onnx").run(["codes"], {"signal": windows})[0]
    with torch.no_grad():
        codes = after.tokenizer(build_preprocessor(after.config)(torch.from_numpy(windows))).codes.numpy()
    assert served.shape == (4, after.config.num_patches, 2)
    np.testing.assert_array_equal(served, codes)


def test_bad_input_is_a_clear_error(micro_image: tuple[Path, Path], tmp_path: Path):
    source, images = micro_image
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no media here")
    no_encoder = tmp_path / "no-encoder"
    no_encoder.mkdir()
    (no_encoder / "config.json").write_text((source / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source / "weights.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("encoder.")},
        str(no_encoder / "weights.safetensors"),
    )

    base = ["--levels", "2", "--codebook-size", "8", "--steps", "2", "--out", str(tmp_path / "out")]
    cases = {
        "holds 0 image files": [str(source), "--data", str(empty), *base],
        "is not a folder": [str(source), "--data", str(tmp_path / "missing"), *base],
        "encoder weights do not match": [str(no_encoder), "--data", str(images), *base],
        "--levels must be >= 1": [str(source), "--data", str(images), *base, "--levels", "0"],
        "--codebook-size must be >= 2": [str(source), "--data", str(images), *base, "--codebook-size", "1"],
    }
    for message, args in cases.items():
        code, output = distil(*args)
        assert code != 0 and "error:" in output and message in output, (message, output)
    assert not (tmp_path / "out").exists()
