"""A run killed mid-epoch and resumed trains on exactly the examples, in exactly the order, of a run that
was never interrupted: no example repeated or skipped (files, and shards read by two workers)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import MICRO, REPO, micro_overrides, subprocess_env
from training_media import write_media

from bridle.training.loader import EpochBatches
from bridle.training.monitor import read_seen
from bridle.training.shards import write_shards
from bridle.training.state import load_stage

STEPS = 80
EXAMPLES, BATCH = 36, 4  # 9 micro-batches an epoch; checkpoints every 5 steps fall mid-epoch


def _run(overrides: list[str], resume: bool, kill_at_checkpoint: Path | None = None) -> None:
    command = [
        sys.executable,
        "-m",
        "bridle.training.cli",
        "run",
        str(MICRO),
        *overrides,
        *(["--resume"] if resume else []),
    ]
    env = subprocess_env()
    if kill_at_checkpoint is None:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not kill_at_checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kill_at_checkpoint.is_file(), "no checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


@pytest.mark.parametrize("source", ["files", "shards"])
def test_a_run_killed_mid_epoch_sees_each_example_once(tmp_path: Path, source: str) -> None:
    common = [
        "checkpoint_every=5",
        f"data.batch_size={BATCH}",
        "data.record_seen=true",
        f"stages=[{{kind: pretrain, steps: {STEPS}, log_every: 20}}]",
    ]
    if source == "shards":
        files = write_media("image", tmp_path / "files", EXAMPLES // 2)
        write_shards(files, tmp_path / "shards", "image", max_count=4)  # 9 shards over 2 workers
        common += [f"data.train={tmp_path / 'shards'}", "data.workers=2"]

    def overrides(name: str) -> list[str]:
        base = micro_overrides("image", tmp_path / name, per_class=EXAMPLES // 2, test=False)
        return [*base, *common]

    _run(overrides("straight"), resume=False)
    stage = Path("00-pretrain")
    reference = read_seen(tmp_path / "straight" / "run" / stage / "seen-0.tsv")
    assert [step for step, _ in reference] == list(range(1, STEPS + 1))

    checkpoint = tmp_path / "killed" / "run" / stage / "checkpoint" / "config.json"
    _run(overrides("killed"), resume=False, kill_at_checkpoint=checkpoint)
    killed = load_stage(checkpoint.parent.parent)
    assert killed is not None and not killed.done and 0 < killed.step < STEPS
    assert killed.extra["data_position"] % (EXAMPLES // BATCH) != 0, "killed at an epoch boundary"
    _run(overrides("killed"), resume=True)
    resumed = read_seen(tmp_path / "killed" / "run" / stage / "seen-0.tsv")
    assert resumed == reference

    ids = [k for _, batch in reference for k in batch]
    epochs = [ids[i : i + EXAMPLES] for i in range(0, EXAMPLES * 2, EXAMPLES)]
    assert all(len(set(epoch)) == EXAMPLES for epoch in epochs[:1])  # the first epoch: each example once
    if source == "files":  # every epoch is one permutation of the 36 files
        assert all(sorted(set(e)) == sorted(e) and len(e) == EXAMPLES for e in epochs)
        sampler = iter(EpochBatches(EXAMPLES, BATCH, seed=0))
        assert [k for _, batch in reference[:18] for k in batch] == [
            str(i) for _ in range(18) for i, _ in next(sampler)
        ]
