"""The real-data benchmark end to end on a small UrbanSound8K-layout set (micro networks, few steps):
every arm, fraction, fold and seed becomes a row of ssl.json, a rerun resumes instead of retraining, and
the report tabulates the paired differences."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bridle.data.small_benchmarks import official_urbansound8k
from experiments.benchmarks.plan import BENCHMARKS, SWEEP_LRS
from experiments.ssl_benchmark import app

MICRO = ["--set", "model.preset=micro-audio", "--set", "data.batch_size=8"]
for i in range(3):
    MICRO += ["--set", f"stages.{i}.steps=2", "--set", f"stages.{i}.warmup_steps=1"]


def test_the_benchmark_writes_a_row_per_run_and_resumes(tmp_path: Path) -> None:
    root = official_urbansound8k(tmp_path / "us8k", per_class=2)
    runs, out = tmp_path / "runs", tmp_path / "results"
    args = ["run", "--dataset", "urbansound8k", "--urbansound8k", str(root), "--runs", str(runs)]
    args += ["--out", str(out), "--seeds", "2", "--finetune-steps", "2", *MICRO]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "ssl.json").read_text())
    bench = BENCHMARKS["urbansound8k"]
    assert len(rows) == len(bench.parts) * len(bench.fractions) * 2 * 3  # parts x fractions x seeds x arms
    assert {r["arm"] for r in rows} == {"bridle", "random-init", "features"}
    assert {r["split"] for r in rows} == {"fold1->fold2", "fold2->fold1"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and set(r) >= {"dataset", "labels", "seed"} for r in rows)
    sweep = json.loads((out / "lr-sweep.json").read_text())
    assert sorted({r["lr"] for r in sweep}) == sorted(SWEEP_LRS) and len(sweep) == 2 * len(SWEEP_LRS)
    lrs = {r["lr"] for r in rows if r["arm"] != "features"}
    assert len(lrs) == 1 and lrs <= set(SWEEP_LRS)  # one swept rate, the same for both arms
    # both arms of a fold share its pretraining, which saw only the training fold
    pretrain = runs / "urbansound8k" / "fold1-fold2" / "pretrain"
    linked = runs / "urbansound8k" / "fold1-fold2" / f"bridle-0.1-s0-lr{lrs.pop():g}" / "pretrain1"
    assert linked.resolve() == (pretrain / "pretrain1").resolve()
    tables = (out / "tables.md").read_text()
    assert "bridle - random-init" in tables and "Two-fold cross-validation" in tables

    probe = ["probe", "--dataset", "urbansound8k", "--urbansound8k", str(root), "--runs", str(runs)]
    probed = CliRunner().invoke(app, [*probe, "--out", str(out)])
    assert probed.exit_code == 0, probed.output
    probes = json.loads((out / "probe.json").read_text())
    assert sorted((p["split"], p["arm"]) for p in probes) == sorted(
        (part.name, arm) for part in bench.parts for arm in ("bridle", "random-init")
    )
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in probes)

    again = CliRunner().invoke(app, args)  # everything is there: nothing runs, nothing is added
    assert again.exit_code == 0, again.output
    assert json.loads((out / "ssl.json").read_text()) == rows


def test_an_unknown_data_set_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--dataset", "mnist", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown data set" in result.output
