"""The image evaluation command on a micro model and the quick demo data: every table row, sane figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridle.data import DIGIT_WORDS
from bridle.model.checkpoint import build_servable
from bridle.model.config import preset
from experiments.eval_image import CONFIDENT, evaluate, markdown, not_digits, temperature_check


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bridle.export.model_dir import export_model_dir

    out = tmp_path_factory.mktemp("eval") / "image-digits"
    servable = build_servable(preset("micro-image"), labels=sorted(DIGIT_WORDS), seed=0)
    export_model_dir(servable, out, run_verify=False)
    return out


def test_the_tables_cover_every_split_and_the_non_digit_inputs(model_dir: Path, demo_root: Path):
    data = demo_root / "image-digits"
    result = evaluate(model_dir, data)
    names = [r["name"] for r in result["digits"]]
    assert any("scikit-learn test" in n for n in names) and any("held-out fonts" in n for n in names)
    both = next(r for r in result["digits"] if r["name"] == "held-out fonts, both polarities")
    assert both["examples"] == len(list((data / "printed-test").glob("*/*.png")))
    for row in result["digits"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["ece"] <= 1 and 0.1 <= row["mean_top_score"] <= 1
    assert [r["name"].split(" ")[0] for r in result["not_digits"]] == ["photo", "noise", "blank"]
    assert all(0 <= r["confident"] <= 1 for r in result["not_digits"])
    table = markdown(result)
    assert f"top score >= {CONFIDENT}" in table and table.count("\n|") >= 10
    rows = temperature_check(model_dir, data)
    assert [r["fitted_on"] for r in rows] == ["val", "val, scikit-learn part"]
    assert all(r["temperature"] > 0 for r in rows)


def test_non_digit_images_are_deterministic_files():
    a, b = not_digits(seed=0, per_kind=3), not_digits(seed=0, per_kind=3)
    assert a == b and all(len(files) == 3 for files in a.values())
    assert not_digits(seed=1, per_kind=3)["noise"] != a["noise"]
