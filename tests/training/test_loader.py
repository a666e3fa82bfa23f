"""The endless batch stream: today's sampler orders, exact continuation from a position, rank splits."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DistributedSampler, RandomSampler

from bridle.training.loader import EpochBatches


def _take(sampler: EpochBatches, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_one_process_keeps_random_samplers_order() -> None:
    sampler = EpochBatches(10, 3, seed=5)  # 3 batches an epoch, the short last one dropped
    batches = _take(sampler, 6)
    for epoch in (0, 1):
        expected = list(RandomSampler(range(10), generator=torch.Generator().manual_seed(5 + epoch)))
        got = [i for batch in batches[3 * epoch : 3 * epoch + 3] for i, e in batch if e == epoch]
        assert got == expected[:9]


def test_ranks_keep_distributed_samplers_split() -> None:
    for rank in (0, 1):
        sampler = EpochBatches(7, 2, seed=3, rank=rank, world=2)
        reference = DistributedSampler(range(7), num_replicas=2, rank=rank, shuffle=True, seed=3)
        reference.set_epoch(1)
        epoch1 = [i for batch in _take(sampler, 4)[2:] for i, _ in batch]
        assert epoch1 == list(reference)[:4]


def test_a_stream_started_at_a_position_continues_exactly() -> None:
    whole = _take(EpochBatches(11, 4, seed=0), 9)
    for start in (1, 2, 5):
        assert _take(EpochBatches(11, 4, seed=0, start=start), 9 - start) == whole[start:]


def test_a_data_set_smaller_than_a_batch_keeps_its_short_batch() -> None:
    assert [len(b) for b in _take(EpochBatches(3, 8, seed=0), 2)] == [3, 3]
