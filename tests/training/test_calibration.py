"""Temperature scaling: the fit, the ECE, and the temperature folded into a servable and its export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bridle.model.checkpoint import build_servable, load_servable, save_servable
from bridle.model.config import preset
from bridle.training.calibration import (
    CalibrationError,
    apply_temperature,
    calibrate_servable,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    servable_logits,
    softmax,
)
from bridle.training.cli import app
from bridle.training.data import MediaDataset

LABELS = ["a", "b", "c"]


def sampled(true_t: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits z and labels drawn from softmax(z / true_t): the right temperature is true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, size=(n, classes))
    p = softmax(z, true_t)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return z, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    z, labels = sampled(true_t)
    t = fit_temperature(z, labels)
    assert t == pytest.approx(true_t, rel=0.1)
    assert negative_log_likelihood(z, labels, t) <= negative_log_likelihood(z, labels, 1.0) + 1e-9


def test_ece_of_an_exact_case():
    # two examples at confidence 0.9 (one right), two at 0.6 (both right): 15 bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bin of 0.9: |0.5 - 0.9| * 1/2; bin of 0.6: |1.0 - 0.6| * 1/2
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_ece_falls_after_calibration_of_an_overconfident_model():
    z, labels = sampled(3.0)  # the raw logits are 3x too sharp
    before = expected_calibration_error(softmax(z), labels)
    after = expected_calibration_error(softmax(z, fit_temperature(z, labels)), labels)
    assert before > 0.1 and after < 0.03


def test_bad_inputs_are_refused():
    with pytest.raises(CalibrationError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(CalibrationError):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(CalibrationError):
        expected_calibration_error(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(CalibrationError):
        apply_temperature(build_servable(preset("micro-image"), labels=LABELS), 0.0)
    with pytest.raises(CalibrationError, match="no classifier"):
        calibrate_servable(build_servable(preset("micro-image")), np.zeros((2, 3)), np.array([0, 1]))


def test_temperature_is_folded_into_the_head_and_composes():
    servable = build_servable(preset("micro-image"), labels=LABELS, seed=3)
    x = torch.randn(4, servable.config.encoder.dim)
    before = servable.classifier(x)
    apply_temperature(servable, 2.0)
    assert torch.allclose(servable.classifier(x), before / 2.0, atol=1e-5)

    logits, labels = sampled(2.0, n=300, classes=3)
    report = calibrate_servable(servable, logits, labels, data="synthetic")
    record = servable.provenance["calibration"]
    assert record["temperature"] == pytest.approx(report.fitted_temperature)  # no earlier fit recorded
    report2 = calibrate_servable(servable, logits, labels)
    assert servable.provenance["calibration"]["temperature"] == pytest.approx(
        report.fitted_temperature * report2.fitted_temperature
    )


def write_images(root, n_per_class=4):
    rng = np.random.default_rng(0)
    for k, label in enumerate(LABELS):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // (k + 1)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def test_calibrate_command_writes_a_calibrated_checkpoint_that_exports(tmp_path):
    from bridle.export.model_dir import export_model_dir
    from bridle.model.manifest import read_manifest

    ckpt, out, data = tmp_path / "servable", tmp_path / "calibrated", tmp_path / "held-out"
    servable = build_servable(preset("micro-image"), labels=LABELS, seed=1)
    save_servable(ckpt, servable)
    write_images(data)
    result = CliRunner().invoke(app, ["calibrate", str(ckpt), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["examples"] == 12 and report["temperature"] > 0

    calibrated = load_servable(out)
    held_out = MediaDataset(data, calibrated.config, labels=calibrated.labels)
    raw, _ = servable_logits(load_servable(ckpt), held_out)
    scaled, _ = servable_logits(calibrated, held_out)
    np.testing.assert_allclose(scaled, raw / report["temperature"], rtol=1e-4, atol=1e-5)

    exported = export_model_dir(out, tmp_path / "model")  # verification (PyTorch vs ORT) passes
    assert exported.report is not None and exported.report.ok
    manifest = read_manifest(tmp_path / "model")
    assert manifest.provenance["calibration"]["temperature"] == pytest.approx(report["temperature"])


def test_calibrate_command_refuses_missing_data(tmp_path):
    ckpt = tmp_path / "servable"
    save_servable(ckpt, build_servable(preset("micro-image"), labels=LABELS))
    result = CliRunner().invoke(app, ["calibrate", str(ckpt), "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "error:" in result.output


def write_recipe(path, augment: dict) -> None:
    """A one-stage image recipe whose data.augment is `augment` (calibrate --augment reads only that)."""
    import yaml

    recipe = {
        "name": "calibration-test",
        "model": {"preset": "micro-image"},
        "data": {"train": "unused", "modality": "image", "augment": augment},
        "stages": [{"kind": "classifier", "steps": 1}],
    }
    path.write_text(yaml.safe_dump(recipe))


def test_calibrate_under_augmentation_fits_on_seeded_draws_of_each_example(tmp_path):
    ckpt, data, recipe = tmp_path / "servable", tmp_path / "held-out", tmp_path / "recipe.yaml"
    save_servable(ckpt, build_servable(preset("micro-image"), labels=LABELS, seed=1))
    write_images(data)
    write_recipe(recipe, {"affine_p": 1.0, "polarity_p": 0.5, "contrast_p": 1.0, "blur_p": 0.5})

    def calibrate(out: str, *options: str) -> dict:
        args = ["calibrate", str(ckpt), "--data", str(data), "--out", str(tmp_path / out), *options]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    plain = calibrate("plain")
    augmented = calibrate("augmented", "--augment", str(recipe), "--repeats", "3")
    again = calibrate("again", "--augment", str(recipe), "--repeats", "3")
    other_seed = calibrate("other", "--augment", str(recipe), "--repeats", "3", "--seed", "7")

    assert plain["examples"] == 12 and augmented["examples"] == 36
    assert "augmentation" in augmented["data"] and "augmentation" not in plain["data"]
    assert augmented["temperature"] == again["temperature"]  # seeded: the same draws every time
    assert augmented["temperature"] != plain["temperature"]  # the draws are not the plain examples
    assert augmented["temperature"] != other_seed["temperature"]


def test_calibrate_refuses_repeats_without_augmentation_and_a_recipe_without_any(tmp_path):
    ckpt, data, recipe = tmp_path / "servable", tmp_path / "held-out", tmp_path / "recipe.yaml"
    save_servable(ckpt, build_servable(preset("micro-image"), labels=LABELS))
    write_images(data)
    write_recipe(recipe, {})
    for options, message in (
        (["--repeats", "2"], "--repeats needs --augment"),
        (["--augment", str(recipe)], "sets no data.augment"),
    ):
        result = CliRunner().invoke(app, ["calibrate", str(ckpt), "--data", str(data), *options])
        assert result.exit_code == 1 and message in result.output, result.output
