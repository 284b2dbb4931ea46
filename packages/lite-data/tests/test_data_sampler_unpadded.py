"""UnpaddedDistributedSampler and distributed_dataloader(even=False): every sample on exactly one rank."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from lite_data import (
    DataLoaderError,
    DistributedSamplerWrapper,
    UnpaddedDistributedSampler,
    distributed_dataloader,
)


@given(n=st.integers(0, 50), replicas=st.integers(1, 6), shuffle=st.booleans(), epoch=st.integers(0, 3))
def test_every_index_once_and_lengths_within_one(n: int, replicas: int, shuffle: bool, epoch: int) -> None:
    shares = []
    for rank in range(replicas):
        sampler = UnpaddedDistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=3)
        sampler.set_epoch(epoch)
        share = list(sampler)
        assert len(share) == len(sampler)
        shares.append(share)
    assert sorted(i for share in shares for i in share) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_seven_on_two() -> None:
    assert [list(UnpaddedDistributedSampler(range(7), 2, r)) for r in (0, 1)] == [[0, 2, 4, 6], [1, 3, 5]]
    with pytest.raises(DataLoaderError):
        UnpaddedDistributedSampler(range(7), 2, 2)


def test_distributed_dataloader_even_false() -> None:
    loaders = [
        distributed_dataloader(DataLoader(range(7), batch_size=3), num_replicas=2, rank=r, even=False)
        for r in (0, 1)
    ]
    assert [[int(i) for b in dl for i in b] for dl in loaders] == [[0, 2, 4, 6], [1, 3, 5]]
    padded = distributed_dataloader(DataLoader(range(7), batch_size=3), num_replicas=2, rank=1)
    assert len([i for b in padded for i in b]) == 4  # the default pads


def test_the_wrapper_even_false_for_a_custom_batch_sampler() -> None:
    batches = BatchSampler(SequentialSampler(range(10)), batch_size=2, drop_last=False)  # 5 batches
    shares = [list(DistributedSamplerWrapper(batches, 2, r, even=False)) for r in (0, 1)]
    assert shares == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7]]]
    assert [len(DistributedSamplerWrapper(batches, 2, r, even=False)) for r in (0, 1)] == [3, 2]
