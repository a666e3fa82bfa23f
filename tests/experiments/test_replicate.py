"""The replication on the micro budget end to end, its statistics, probes and the static-codebook arm."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bridle.model.config import QuantizerConfig
from bridle.model.media_sets import read_manifest_rows
from bridle.model.quantizer import ResidualQuantizer
from experiments.probe import label_draws, loso_accuracy
from experiments.replicate import app
from experiments.replication.plan import BUDGETS, CONTROLS, encoders
from experiments.replication.report import CLAIMS, ITER1_TOKENIZER
from experiments.replication.stats import interval, paired
from experiments.replication.train import static_codebooks

SPEAKERS = ("alpha", "bravo", "charlie", "delta")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def fsdd_like(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FSDD-shaped folder ({digit}_{speaker}_{index}.wav, 4 speakers, takes 0 and 5) of demo clips."""
    out = tmp_path_factory.mktemp("fsdd")
    rows = read_manifest_rows(demo_root / "audio-digits" / "metadata.csv")
    voices = sorted({r["voice"] for r in rows})
    clip = {(r["voice"], r["digit"]): demo_root / "audio-digits" / r["path"] for r in rows}
    for k, speaker in enumerate(SPEAKERS):
        for d, word in enumerate(DIGITS):
            for j, take in enumerate((0, 5)):
                shutil.copy(clip[voices[(k + j) % len(voices)], word], out / f"{d}_{speaker}_{take}.wav")
    return out


def test_micro_replication_reports_every_variant_control_and_column(fsdd_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "replication"
    args = ["--fsdd", str(fsdd_like), "--out", str(out), "--budget", "micro", "--seeds", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded machine one thread is several times faster than two
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output

    budget = BUDGETS["micro"]
    report = json.loads((out / "results.json").read_text())
    names = encoders(budget.arms)
    assert set(CONTROLS) <= set(names)
    for modality in ("audio", "image"):
        for metric in budget.probe.metrics(modality):
            for variant in names:
                values = [
                    s["value"]
                    for s in report["scores"]
                    if (s["modality"], s["variant"], s["metric"]) == (modality, variant, metric)
                ]
                assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), (modality, variant, metric)
        usage = [u for u in report["usage"] if u["modality"] == modality]
        assert {u["tokenizer"] for u in usage} == {ITER1_TOKENIZER, *(a.name for a in budget.arms)}
        for u in usage:
            assert all(0.0 < x <= 1.0 for x in u["held_out"] + u["seen"])
            assert math.isfinite(u["effective_rank"]) and u["effective_rank"] >= 1.0
    assert {c["claim"] for c in report["comparisons"]} == set(CLAIMS)
    curve_stages = {(c["variant"], c["stage"]) for c in report["curves"]}
    assert ("iter1", "pretrain1") in curve_stages and ("iter1-long", "pretrain1-long") in curve_stages
    for arm in budget.arms:
        assert (arm.name, "tokenizer") in curve_stages
        assert ((arm.name, "pretrain2") in curve_stages) == arm.pretrain

    table = (out / "results.md").read_text()
    for variant in names:
        assert f"| {variant} |" in table
    for arm in budget.arms:
        assert f"| {arm.name} |" in table
    for modality in ("audio", "image"):
        for metric in budget.probe.metrics(modality):
            assert f"{modality} {metric} (%)" in table
    for claim in CLAIMS:
        assert f"| ({claim}) |" in table and f"**({claim})" in table
    for column in ("held-out usage per level", "training-data usage per level", "effective rank"):
        assert column in table
    assert "python -m experiments.replicate" in table and "load average" in table
    for name in ("accuracy.png", "usage.png", "usage_steps.png", "losses.png"):
        assert (out / name).stat().st_size > 1000
        assert f"![{name}]({name})" in table
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))

    (out / "results.md").unlink()  # the report rebuilt from the raw records, no training
    result = CliRunner().invoke(app, ["--out", str(out), "--budget", "micro", "--report-only"])
    assert result.exit_code == 0, result.output
    assert (out / "results.md").read_text() == table


def test_rejects_missing_data_and_bad_options(tmp_path: Path) -> None:
    runner, base = CliRunner(), ["--out", str(tmp_path / "out"), "--seeds", "2"]
    result = runner.invoke(app, ["--fsdd", str(tmp_path / "none"), *base, "--budget", "micro"])
    assert result.exit_code == 1 and "FSDD" in result.output and isinstance(result.exception, SystemExit)
    for bad in (["--budget", "huge"], ["--modality", "smell"], ["--seeds", "0"], ["--first-seed", "-1"]):
        result = runner.invoke(app, ["--fsdd", str(tmp_path), *base, *bad])
        assert result.exit_code == 2, (bad, result.output)


def test_interval_and_paired_difference_match_a_hand_computation() -> None:
    i = interval([0.5, 0.6, 0.7])  # mean 0.6, sd 0.1, t_{0.975,2} = 4.3027
    assert i.mean == pytest.approx(0.6) and i.high - i.mean == pytest.approx(
        4.3027 * 0.1 / math.sqrt(3), 1e-4
    )
    d = paired({0: 0.9, 1: 0.8, 2: 0.85, 3: 0.1}, {0: 0.5, 1: 0.5, 2: 0.5})  # seed 3 has no partner
    assert d.n == 3 and d.mean == pytest.approx(0.35) and d.verdict() == "higher"
    assert paired({0: 0.1, 1: 0.3}, {0: 0.2, 1: 0.1}).verdict() == "no detectable difference"
    assert paired({0: 0.1, 1: 0.2, 2: 0.1}, {0: 0.5, 1: 0.55, 2: 0.6}).verdict() == "lower"


def test_leave_one_speaker_out_never_trains_on_the_held_out_speaker() -> None:
    # Each speaker's digits are told apart by a feature only that speaker uses: a probe that saw the
    # held-out speaker would be near perfect, one that did not is near chance (2 digits).
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(4), 40)
    digits = np.tile(np.arange(2), 80)
    x = rng.normal(size=(160, 4)) * 0.01
    x[np.arange(160), speakers] += np.where(digits == 1, 1.0, -1.0)
    assert loso_accuracy(x, digits, speakers, c=1.0) <= 0.7
    leaky = np.concatenate([x, (digits * 2.0 - 1)[:, None]], axis=1)  # a feature shared by every speaker
    assert loso_accuracy(leaky, digits, speakers, c=1.0) >= 0.9


def test_label_draws_take_the_budget_of_every_class() -> None:
    y = np.repeat(np.arange(10), 30)
    draws = label_draws(y, 5, draws=3, seed=0)
    assert len(draws) == 3 and all(np.bincount(y[d], minlength=10).tolist() == [5] * 10 for d in draws)
    assert not np.array_equal(np.sort(draws[0]), np.sort(draws[1]))
    assert all(np.array_equal(a, b) for a, b in zip(draws, label_draws(y, 5, draws=3, seed=0), strict=True))


def test_static_codebooks_stop_ema_and_restarts_only_while_active() -> None:
    cfg = QuantizerConfig(levels=2, codebook_size=8, dim=4, decay=0.5, kmeans_iters=2, dead_code_steps=1)
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    for static, moves in ((True, False), (False, True)):
        rq = ResidualQuantizer(cfg)
        rq.init_codebooks(x)
        before = rq.codebooks.clone()
        rq.train()
        with static_codebooks(static):
            for _ in range(3):
                rq(torch.randn(64, 4))
        assert (not torch.equal(rq.codebooks, before)) == moves
    rq = ResidualQuantizer(cfg)  # the hook is gone after the block: a new quantizer updates again
    rq.init_codebooks(x)
    before = rq.codebooks.clone()
    rq.train()(torch.randn(64, 4))
    assert not torch.equal(rq.codebooks, before)
