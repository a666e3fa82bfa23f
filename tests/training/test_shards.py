"""WebDataset shards: written from a folder they yield the same examples; readers get distinct shards; a
stream continues exactly from a position; bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from training_helpers import MICRO, micro_overrides, run_torchrun
from training_media import write_media
from typer.testing import CliRunner

from bridle.model.config import preset
from bridle.model.media_sets import decode_example
from bridle.training.cli import app
from bridle.training.data import ItemMaker, MediaDataset
from bridle.training.monitor import read_seen
from bridle.training.shards import ShardError, ShardSet, ShardStream, write_shards


def _stream(shards: ShardSet, modality: str, batch: int, workers: int = 1, **kw) -> ShardStream:
    cfg = preset(f"micro-{modality}")
    return ShardStream(
        shards, batch, 7, workers=workers, cfg=cfg, decode=decode_example, make_item=ItemMaker(cfg), **kw
    )


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_shards_written_from_a_folder_yield_the_same_examples(tmp_path: Path, modality: str) -> None:
    folder = write_media(modality, tmp_path / "files", per_class=5)
    shards = write_shards(folder, tmp_path / "shards", modality, max_count=3)
    assert [n for _, n in shards.shards] == [3, 3, 3, 1] and shards.labels == ["high", "low"]
    files = MediaDataset(folder, preset(f"micro-{modality}"))
    by_path = {str(e.path): i for i, e in enumerate(files.entries)}
    index = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert index["count"] == 10 and index["skipped"] == []

    signal, label, keys = next(iter(_stream(shards, modality, batch=10)))  # one whole epoch
    assert sorted(keys) == [f"{k:09d}" for k in range(10)]
    paths = {k: json.loads(s["json"])["path"] for k, s in _members(shards).items()}
    assert sorted(paths.values()) == sorted(by_path)  # every file once
    for row, key in enumerate(keys):
        expected, target = files[by_path[paths[key]]]
        torch.testing.assert_close(signal[row], expected, rtol=0, atol=0)
        assert int(label[row]) == target


def _members(shards: ShardSet) -> dict[str, dict]:
    from bridle.training.shards import read_shard

    return {s["__key__"]: s for name, _ in shards.shards for s in read_shard(shards.root / name)}


def test_readers_of_two_ranks_with_two_workers_get_disjoint_shards(tmp_path: Path) -> None:
    shards = write_shards(write_media("image", tmp_path / "f", 6), tmp_path / "s", "image", max_count=2)
    seen: list[list[str]] = []
    for rank in (0, 1):
        stream = _stream(shards, "image", batch=2, workers=2, rank=rank, world=2)
        for reader in (2 * rank, 2 * rank + 1):
            epoch0 = []
            for key, _, _, epoch in stream.examples(reader, skip=0):
                if epoch > 0:
                    break
                epoch0.append(key)
            seen.append(epoch0)
    ids = [k for reader in seen for k in reader]
    assert all(seen) and len(ids) == 12 == len(set(ids))  # 6 shards over 4 readers: disjoint, all read


def test_a_stream_resumed_at_a_position_continues_exactly(tmp_path: Path) -> None:
    shards = write_shards(write_media("image", tmp_path / "f", 7), tmp_path / "s", "image", max_count=3)

    def keys(start: int, count: int) -> list[list[str]]:
        loader = DataLoader(
            _stream(shards, "image", batch=3, workers=2, start=start), batch_size=None, num_workers=2
        )
        out = []
        for _, _, k in loader:
            out.append(k)
            if len(out) == count:
                return out
        raise AssertionError("the stream ended")

    whole = keys(0, 12)  # 36 examples: two epochs and a bit, across both workers
    assert keys(5, 7) == whole[5:]
    first_epoch = [k for batch in whole[:4] for k in batch]  # workers alternate: 2 + 2 batches of 3
    assert len(set(first_epoch)) == len(first_epoch)


def test_bad_files_are_left_out_and_listed(tmp_path: Path) -> None:
    folder = write_media("image", tmp_path / "f", 2)
    (folder / "high" / "broken.png").write_bytes(b"not a png")
    shards = write_shards(folder, tmp_path / "s", "image")
    index = json.loads((tmp_path / "s" / "shards.json").read_text())
    assert shards.count == 4 and [Path(s["path"]).name for s in index["skipped"]] == ["broken.png"]
    with pytest.raises(ShardError, match="not empty"):
        write_shards(folder, tmp_path / "s", "image")
    with pytest.raises(ShardError, match="1 shards for 2 readers"):
        _stream(shards, "image", batch=2, workers=2)
    with pytest.raises(ShardError, match=r"no shards\.json"):
        ShardSet.load(folder)


def test_the_shards_command(tmp_path: Path) -> None:
    folder = write_media("audio", tmp_path / "f", 2)
    runner = CliRunner()
    done = runner.invoke(
        app, ["shards", str(folder), str(tmp_path / "s"), "--modality", "audio", "--max-count", "2"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "out": str(tmp_path / "s"),
        "shards": 2,
        "examples": 4,
        "labels": ["high", "low"],
    }
    bad = runner.invoke(app, ["shards", str(folder), str(tmp_path / "t"), "--modality", "text"])
    assert bad.exit_code == 2 and "--modality" in bad.output


def test_two_ddp_processes_train_on_disjoint_shards(tmp_path: Path) -> None:
    shards = write_shards(write_media("image", tmp_path / "f", 8), tmp_path / "s", "image", max_count=2)
    overrides = [
        *micro_overrides("image", tmp_path, test=False),
        f"data.train={tmp_path / 's'}",
        "data.batch_size=2",
        "data.record_seen=true",
        "stages=[{kind: pretrain, steps: 4, log_every: 2}]",
    ]
    done = run_torchrun(["-m", "bridle.training.cli", "run", str(MICRO), *overrides])
    assert done.returncode == 0, done.stderr[-3000:]
    stage = tmp_path / "run" / "00-pretrain"
    shard_of = {k: name for name, _ in shards.shards for k in _keys_in(shards, name)}
    per_rank = []
    for rank in (0, 1):
        rows = read_seen(stage / f"seen-{rank}.tsv")
        assert [step for step, _ in rows] == [1, 2, 3, 4]
        ids = [k for _, batch in rows for k in batch]
        assert len(ids) == 8 == len(set(ids))  # one epoch of 8 per rank, no repeats
        per_rank.append({shard_of[k] for k in ids})
    assert not per_rank[0] & per_rank[1] and len(per_rank[0] | per_rank[1]) == 8  # disjoint shards


def _keys_in(shards: ShardSet, name: str) -> list[str]:
    from bridle.training.shards import read_shard

    return [s["__key__"] for s in read_shard(shards.root / name)]
