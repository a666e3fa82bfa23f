"""The audio evaluation command's parts: non-digit inputs, tables, and a fold that cannot start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bridle.training.calibration import expected_calibration_error, fit_temperature, softmax
from experiments.eval_audio import (
    NON_DIGIT_EACH,
    SAMPLE_SECONDS,
    app,
    cross_speaker_calibration,
    non_digit_inputs,
    non_digit_table,
    score_table,
)


def test_non_digit_inputs_are_deterministic_and_of_each_kind() -> None:
    a, b = non_digit_inputs(8000, seed=1), non_digit_inputs(8000, seed=1)
    assert sorted(a) == ["music-like tones", "pink noise", "silence", "white noise"]
    for kind, waves in a.items():
        assert len(waves) == NON_DIGIT_EACH and all(len(w) == int(SAMPLE_SECONDS * 8000) for w in waves)
        assert all(w.dtype == np.float32 and np.abs(w).max() <= 1.0 for w in waves)
        np.testing.assert_array_equal(waves[3], b[kind][3])
    assert max(float(np.abs(w).max()) for w in a["silence"]) < 1e-2


def test_tables_show_every_row() -> None:
    scores = [
        {"data": "FSDD jackson", "examples": 500, "accuracy": 0.962, "ece": 0.031, "mean_top_score": 0.9}
    ]
    assert "| FSDD jackson | 500 | 96.2% | 0.031 | 0.900 |" in score_table(scores)
    rows = [
        {
            "kind": "silence",
            "examples": 40,
            "mean_top_score": 0.41,
            "above_half": 0.25,
            "above_0_9": 0.0,
            "most_said": "eight",
            "most_said_share": 0.6,
        }
    ]
    assert "| silence | 40 | 0.410 | 25% | 0% | eight (60%) |" in non_digit_table(rows)


def test_loso_without_pretrained_stages_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["loso", "--pretrained", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "run `train` first" in result.output


def test_loso_refuses_heard_speakers_that_are_unknown_or_held_out(tmp_path: Path) -> None:
    args = ["loso", "--speakers", "jackson", "--heard", "george", "--heard", "jackson"]
    result = CliRunner().invoke(app, [*args, "--pretrained", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "cannot be both heard and held out" in result.output
    result = CliRunner().invoke(app, ["loso", "--heard", "alice", "--pretrained", str(tmp_path)])
    assert result.exit_code == 1 and "unknown speakers ['alice']" in result.output
    assert not (tmp_path / "out").exists()


def test_cross_speaker_calibration_fits_on_the_other_folds_only() -> None:
    rng = np.random.default_rng(0)
    folds = {}
    for name, scale in (("a", 1.0), ("b", 1.0), ("c", 8.0)):  # c: far more confident logits
        labels = rng.integers(0, 10, 400)
        logits = rng.standard_normal((400, 10))
        logits[np.arange(400), labels] += 2.0
        folds[name] = (logits * scale, labels, 0.5)
    rows = {r["fold"]: r for r in cross_speaker_calibration(folds)}
    ab = [np.concatenate([folds[f][i] for f in "ab"]) for i in (0, 1)]
    assert rows["c"]["cross_temperature"] == pytest.approx(fit_temperature(*ab))  # never c's own logits
    logits, labels, _ = folds["c"]
    assert rows["c"]["cross_ece"] == pytest.approx(
        expected_calibration_error(softmax(logits, fit_temperature(*ab)), labels)
    )
    assert rows["c"]["own_ece"] == pytest.approx(expected_calibration_error(softmax(logits, 0.5), labels))
    assert rows["c"]["cross_temperature"] < rows["a"]["cross_temperature"]  # a's pool holds c's sharp logits
    with pytest.raises(ValueError):
        cross_speaker_calibration({"a": folds["a"]})
