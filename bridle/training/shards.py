"""Sharded training data: WebDataset tar shards written once, streamed by every rank and worker.

    bridle-train shards SOURCE OUT --modality audio [--max-count 1000] [--max-mb 256] [--seed 0]

`write_shards` reads a folder (class sub-folders or unlabelled files) or a CSV/JSONL manifest, as
`MediaDataset` does, checks that every file decodes (those that do not are left out and listed), and
writes the files' own bytes, in a seeded random order, into WebDataset tar shards (`webdataset.ShardWriter`):

    OUT/shard-000000.tar   members <key>.<ext> (the file as it was: wav, flac, png, mp4, ...) and
                           <key>.json {"path": source path, "label": name or null, "ext": ...}
    OUT/shards.json        {"format": "bridle-shards", "version": 1, "modality", "labels", "count",
                            "unlabelled", "shards": [{"name", "count"}], "skipped": [{"path", "reason"}]}

Keys are the examples' numbers 000000000.. in the written order. Shards hold compressed media; decoding
(and the random crop of a long clip) happens when training reads them, in the DataLoader workers.

`ShardStream` reads them for one rank: epoch e takes the shards in a permutation seeded by (seed, e);
the g-th of G = world x workers readers (g = rank x workers + worker) reads shards g, g + G, ...;
each shard is read whole and its examples taken in a permutation seeded by (seed, e, shard), then
batched in the worker. DataLoader hands out the workers' batches in turn (batch k from worker
k mod workers), so after `start` batches a reader knows how many of its own were used and skips exactly
those examples, using the counts in shards.json to pass over whole shards unread; a resumed loader's
worker w plays reader slot (w + start) mod workers, so the turns continue where they stopped.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from bridle.model.config import ModelConfig
from bridle.model.decoding import MediaError
from bridle.model.errors import BridleError
from bridle.model.media_sets import entries_from
from bridle.model.modalities import spec_for

INDEX = "shards.json"
FORMAT = "bridle-shards"
VERSION = 1
PATTERN = "shard-%06d.tar"
UNLABELLED = -1

# (decoded array, example number, epoch) -> the item tensor (crop, augmentation): MediaDataset's
MakeItem = Callable[[np.ndarray, int, int], torch.Tensor]
Decode = Callable[[bytes | Path, ModelConfig], np.ndarray]

log = logging.getLogger(__name__)


class ShardError(BridleError, ValueError):
    """A shard folder is missing, malformed, or too small for the readers asked of it."""


@dataclass(frozen=True)
class ShardSet:
    """The index of a shard folder."""

    root: Path
    modality: str
    labels: list[str]
    shards: list[tuple[str, int]]  # (file name, examples)
    unlabelled: int = 0  # examples without a label

    @property
    def count(self) -> int:
        return sum(n for _, n in self.shards)

    def __len__(self) -> int:
        return self.count

    @classmethod
    def load(cls, root: Path | str) -> ShardSet:
        root = Path(root)
        try:
            index = json.loads((root / INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ShardError(f"{root} has no {INDEX}: write shards with `bridle-train shards`") from e
        except json.JSONDecodeError as e:
            raise ShardError(f"{root / INDEX} is not JSON: {e}") from e
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ShardError(f"{root / INDEX} is not a {FORMAT} v{VERSION} index")
        shards = [(s["name"], int(s["count"])) for s in index["shards"]]
        missing = [name for name, _ in shards if not (root / name).is_file()]
        if missing:
            raise ShardError(f"{root}: shards listed in {INDEX} are missing: {missing[:5]}")
        return cls(root, index["modality"], list(index["labels"]), shards, int(index.get("unlabelled", 0)))


def is_sharded(path: Path | str) -> bool:
    return (Path(path) / INDEX).is_file()


# ---- writing ---------------------------------------------------------------------------------------------


def _checks_out(path: Path, modality: str) -> str | None:
    """None when the file decodes as `modality` (its spec's `probe`), else the reason it does not."""
    try:
        spec_for(modality).probe(path)
    except (MediaError, OSError) as e:
        return str(e)
    return None


def write_shards(
    source: Path | str,
    out: Path | str,
    modality: str,
    max_count: int = 1000,
    max_mb: float = 256.0,
    seed: int = 0,
    label_column: str | None = "label",
    split: str | None = None,
    labelled: bool | None = None,
) -> ShardSet:
    """Write the files of `source` into shards under `out` (see the module doc); returns the index."""
    if max_count < 1 or not max_mb > 0:
        raise ShardError(f"max_count must be >= 1 and max_mb > 0, got {max_count}, {max_mb}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ShardError(f"{out} exists and is not empty: shards are written into a new folder")
    entries = entries_from(source, modality, label_column, split, labelled)
    if not entries:
        raise ShardError(f"no {modality} files found in {source}")
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)  # class folders would otherwise give one class per shard
    labels = sorted({e.label for e in entries if e.label is not None})
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    key = unlabelled = 0
    with wds.ShardWriter(str(out / PATTERN), maxcount=max_count, maxsize=max_mb * 2**20, verbose=0) as sink:
        for i in tqdm(order, desc="sharding", unit="file"):
            entry = entries[i]
            reason = _checks_out(entry.path, modality)
            if reason is not None:
                log.warning("skipping %s: %s", entry.path, reason)
                skipped.append({"path": str(entry.path), "reason": reason})
                continue
            ext = entry.path.suffix.lower().lstrip(".")
            meta = {"path": str(entry.path), "label": entry.label, "ext": ext}
            sink.write({"__key__": f"{key:09d}", ext: entry.path.read_bytes(), "json": meta})
            name = Path(sink.fname).name
            counts[name] = counts.get(name, 0) + 1
            key += 1
            unlabelled += entry.label is None
    if not counts:
        raise ShardError(f"none of the {len(entries)} files of {source} could be decoded")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "modality": modality,
        "labels": labels,
        "count": key,
        "unlabelled": unlabelled,
        "shards": [{"name": name, "count": n} for name, n in sorted(counts.items())],
        "skipped": skipped,
        "source": str(source),
    }
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return ShardSet.load(out)


# ---- reading ---------------------------------------------------------------------------------------------


def read_shard(path: Path) -> list[dict]:
    """The samples of one tar shard, in stored order: {"__key__", "<ext>": bytes, "json": bytes, ...}."""
    samples = wds.WebDataset(
        str(path), shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    return list(samples)


def example_of(sample: dict) -> tuple[str, bytes, str | None]:
    """(key, media bytes, label name) of a shard sample."""
    meta = json.loads(sample["json"])
    return sample["__key__"], sample[meta["ext"]], meta["label"]


def _permutation(n: int, *seed: int) -> list[int]:
    return np.random.default_rng(list(seed)).permutation(n).tolist()


class ShardStream(IterableDataset):
    """This rank's endless stream of batches from a `ShardSet` (see the module doc).

    Yields (signal (B, ...), label (B,), keys [B]). `workers` must equal the DataLoader's num_workers
    (1 when 0). `decode(bytes, cfg)` -> array and `make_item(array, example number, epoch)` -> tensor
    turn a stored file into an item, as `MediaDataset` does for a file on disk.
    """

    def __init__(
        self,
        shards: ShardSet,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 1,
        start: int = 0,
        cfg: ModelConfig | None = None,
        decode: Decode | None = None,
        make_item: MakeItem | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        readers = world * workers
        if len(shards.shards) < readers:
            raise ShardError(
                f"{shards.root} has {len(shards.shards)} shards for {readers} readers (ranks x workers): "
                "write smaller shards (--max-count) or use fewer workers"
            )
        if cfg is None or decode is None or make_item is None:
            raise ShardError("ShardStream needs cfg, decode and make_item")
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self.rank, self.world, self.workers, self.start = rank, world, workers, start
        self.cfg, self.decode, self.make_item = cfg, decode, make_item
        self.label_index = {name: i for i, name in enumerate(labels if labels is not None else shards.labels)}

    def consumed(self, role: int) -> int:
        """How many batches of the reader in worker slot `role` the stream's first `start` batches were
        (batch k of the stream comes from slot k mod workers)."""
        return max(0, -(-(self.start - role) // self.workers))

    def examples(self, reader: int, skip: int) -> Iterator[tuple[str, bytes, str | None, int]]:
        """(key, bytes, label, epoch) of reader `reader`, endlessly, after its first `skip` examples."""
        readers = self.world * self.workers
        epoch = 0
        while True:
            order = _permutation(len(self.shards.shards), self.seed, epoch)[reader::readers]
            for s in order:
                name, count = self.shards.shards[s]
                if skip >= count:
                    skip -= count
                    continue
                samples = read_shard(self.shards.root / name)
                for j in _permutation(len(samples), self.seed, epoch, s)[skip:]:
                    yield (*example_of(samples[j]), epoch)
                skip = 0
            epoch += 1

    def _item(self, key: str, data: bytes, label: str | None, epoch: int) -> tuple[torch.Tensor, int]:
        array = self.decode(data, self.cfg)
        target = UNLABELLED if label is None else self.label_index[label]
        return self.make_item(array, int(key), epoch), target

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise ShardError(f"ShardStream built for {self.workers} workers runs in {workers}")
        role = (worker + self.start) % workers  # the loader's batch `start` comes from worker 0
        reader = self.rank * self.workers + role
        signals, targets, keys = [], [], []
        for key, data, label, epoch in self.examples(reader, self.consumed(role) * self.batch_size):
            signal, target = self._item(key, data, label, epoch)
            signals.append(signal)
            targets.append(target)
            keys.append(key)
            if len(keys) == self.batch_size:
                yield torch.stack(signals), torch.tensor(targets), keys
                signals, targets, keys = [], [], []
