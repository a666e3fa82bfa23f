"""The replication command on the micro budget: every variant and column, finite numbers, the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from typer.testing import CliRunner

from training.replicate import VARIANTS, app


def test_micro_replication_produces_every_variant_and_column(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "replication"
    args = ["--data", str(demo_root), "--out", str(out), "--budget", "micro", "--seeds", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    report = json.loads((out / "results.json").read_text())
    rows = {(r["variant"], r["modality"]) for r in report["rows"]}
    assert rows == {(v.name, m) for v in VARIANTS for m in ("audio", "image")}
    assert len(report["runs"]) == len(VARIANTS) * 2 * 2
    for row in report["rows"]:
        assert row["seeds"] == 2
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and math.isfinite(row["accuracy_std"])
        levels = 1 if "vq" in row["variant"] else 2  # the micro RQ has 2 levels
        assert len(row["usage_rate"]) == len(row["perplexity"]) == levels
        assert all(0.0 < u <= 1.0 for u in row["usage_rate"])
        assert all(math.isfinite(p) and p >= 1.0 for p in row["perplexity"])

    table = (out / "results.md").read_text()
    for variant in VARIANTS:
        assert table.count(f"| {variant.name} |") == 2
    assert "probe accuracy" in table and "usage rate per level" in table
    assert table.splitlines()[0] in result.output
    for name in ("accuracy.png", "usage.png"):
        assert (out / name).stat().st_size > 1000


def test_rejects_missing_data_and_bad_options(tmp_path: Path) -> None:
    runner, base = CliRunner(), ["--out", str(tmp_path / "out"), "--seeds", "1"]
    result = runner.invoke(app, ["--data", str(tmp_path), *base, "--budget", "micro"])
    assert result.exit_code == 1 and "demo_data" in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    for bad in (["--budget", "huge"], ["--modality", "smell"], ["--seeds", "0"]):
        result = runner.invoke(app, ["--data", str(tmp_path), *base, *bad])
        assert result.exit_code == 2, (bad, result.output)
