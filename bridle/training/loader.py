"""The training loop's batches: an endless, resumable stream, decoded in DataLoader workers.

    batches = train_batches(source, batch_size, seed, info, data_spec, start=position)
    next(batches) -> Batch(signal (B, ...), label (B,), ids [B example ids])

`source` is a `MediaDataset` (files or a manifest) or a `ShardSet` (bridle/training/shards.py). Either way the
stream runs epoch after epoch in one DataLoader iterator, so worker processes live for the whole stage
and keep `prefetch_factor` batches ready each. Its order is a pure function of (seed, epoch, rank), and
`start` (micro-batches this rank has already consumed) continues it exactly: a run resumed from a
checkpoint that stored its position sees neither a repeated nor a skipped example.

Files: each epoch is a permutation of the data set seeded by `seed + epoch` (as `RandomSampler` and
`DistributedSampler` draw it, so single- and multi-process runs keep today's order), split across ranks
as `DistributedSampler` splits it; items are fetched as `data[index, epoch]`, so augmentation and crops
are drawn per (epoch, index) whatever the number of workers.
Shards: see `shards.ShardStream`: each rank and worker reads its own shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bridle.training.data import MediaDataset
from bridle.training.distributed import DistInfo
from bridle.training.recipe import DataSpec
from bridle.training.shards import ShardSet, ShardStream


@dataclass(frozen=True)
class Batch:
    signal: torch.Tensor  # (B, ...) what the preprocessor takes
    label: torch.Tensor  # (B,) int64, -1 = unlabelled
    ids: list[str]  # which examples: file index or shard key


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Endless batches of `(index, epoch)` for this rank, after the first `start` batches.

    Per epoch: `torch.randperm(n)` seeded with `seed + epoch`; with `world > 1` padded to a multiple of
    `world` and strided by rank (`DistributedSampler`'s split). The last short batch of an epoch is
    dropped when the data set holds at least one batch per rank (as the loop did before), else kept.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if n < 1 or batch_size < 1 or start < 0:
            raise ValueError(f"need n >= 1, batch_size >= 1, start >= 0; got {n}, {batch_size}, {start}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_rank = math.ceil(n / world)
        drop_last = n >= batch_size * world
        self.per_epoch = self.per_rank // batch_size if drop_last else math.ceil(self.per_rank / batch_size)

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of `epoch`, in order."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.world == 1:
            return perm
        total = self.per_rank * self.world
        padded = (perm * math.ceil(total / self.n))[:total]
        return padded[self.rank : total : self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            order = self.order(epoch)
            for b in range(offset, self.per_epoch):
                yield [(i, epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the stream itself never ends
        return self.per_epoch


class _WithIndex(Dataset):
    """`data[index, epoch]` plus the index, so that each batch says which examples it holds."""

    def __init__(self, data: MediaDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        signal, label = self.data[key]
        return signal, label, key[0]


def loader_options(spec: DataSpec, info: DistInfo) -> dict[str, Any]:
    """DataLoader keyword arguments from `data.*`: workers, prefetching, pinned memory."""
    pin = spec.pin_memory if spec.pin_memory is not None else info.device.type == "cuda"
    options: dict[str, Any] = {"num_workers": spec.workers, "pin_memory": pin}
    if spec.workers > 0:
        # one endless iterator per stage: the workers persist for the whole stage by construction
        options |= {"prefetch_factor": spec.prefetch_factor, "persistent_workers": False}
    return options


def train_batches(
    source: MediaDataset | ShardSet,
    batch_size: int,
    seed: int,
    info: DistInfo,
    spec: DataSpec,
    start: int = 0,
    stream_options: dict[str, Any] | None = None,
) -> Iterator[Batch]:
    """The endless batch stream of this rank, from its `start`-th micro-batch on (see the module doc).

    `stream_options`: for shards, how examples are made (`ShardStream`'s item arguments).
    """
    options = loader_options(spec, info)
    if isinstance(source, ShardSet):
        stream = ShardStream(
            source,
            batch_size,
            seed,
            rank=info.rank,
            world=info.world_size,
            workers=max(1, spec.workers),
            start=start,
            **(stream_options or {}),
        )
        loader: DataLoader = DataLoader(stream, batch_size=None, **options)
    else:
        sampler = EpochBatches(len(source), batch_size, seed, info.rank, info.world_size, start)
        loader = DataLoader(_WithIndex(source), batch_sampler=sampler, **options)
    for signal, label, ids in loader:
        yield Batch(signal, label, [str(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)])
