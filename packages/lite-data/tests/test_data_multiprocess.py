"""Real process groups (gloo on 127.0.0.1): every rank's share, gathered."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lite_data import DeviceDataLoader, distributed_dataloader, seed_everything
from lite_testing import run_processes


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), through tensor collectives: torch's object ones need numpy."""
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()]))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    out = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(out, padded)
    return [pickle.loads(bytes(t[: int(n.item())].tolist())) for t, n in zip(out, sizes)]


def _epochs_of_indices(rank: int, world_size: int, size: int) -> list[list[list[int]]]:
    loader = DataLoader(list(range(size)), batch_size=4, shuffle=True)
    wrapped = DeviceDataLoader(
        distributed_dataloader(loader, num_replicas=world_size, rank=rank), device="cpu"
    )
    return [_gather(torch.cat(list(wrapped)).tolist()) for _ in range(3)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_epoch_covers_the_dataset_once_and_reshuffles(world_size: int) -> None:
    size = 24
    results = run_processes(_epochs_of_indices, world_size, size, timeout=60)
    assert all(r == results[0] for r in results)  # every rank gathered the same shares
    orders = []
    for shares in results[0]:
        assert len(shares) == world_size
        assert sorted(itertools.chain(*shares)) == list(range(size))  # each item exactly once
        orders.append(shares)
    assert orders[0] != orders[1] != orders[2]


class _Interleaved(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter([*range(self.n - 1, -1, -2), *range(self.n - 2, -1, -2)])

    def __len__(self) -> int:
        return self.n


class _BucketBatches(Sampler[list[int]]):
    def __init__(self, n: int) -> None:
        self.batches = [list(range(i, min(i + 3, n))) for i in range(0, n, 3)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _custom_shares(rank: int, world_size: int) -> tuple[list[Any], list[Any]]:
    by_sampler = distributed_dataloader(
        DataLoader(list(range(20)), sampler=_Interleaved(20), batch_size=2),
        num_replicas=world_size,
        rank=rank,
    )
    by_batch_sampler = distributed_dataloader(
        DataLoader(list(range(24)), batch_sampler=_BucketBatches(24)), num_replicas=world_size, rank=rank
    )
    return (
        _gather(torch.cat(list(DeviceDataLoader(by_sampler))).tolist()),
        _gather([b.tolist() for b in DeviceDataLoader(by_batch_sampler)]),
    )


def test_custom_sampler_and_batch_sampler_are_shared_disjointly() -> None:
    (items, batches), _ = run_processes(_custom_shares, 2, timeout=60)
    assert sorted(items[0] + items[1]) == list(range(20))
    assert not set(items[0]) & set(items[1])
    assert items[0][:3] == [19, 15, 11]  # the custom order, dealt out
    assert sorted(batches[0] + batches[1]) == _BucketBatches(24).batches
    assert not {tuple(b) for b in batches[0]} & {tuple(b) for b in batches[1]}


class _WorkerRandom(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        return torch.tensor([float(info.id), torch.rand(1).item(), random.random()])


def _worker_streams(rank: int, world_size: int) -> list[Any]:
    # run_processes starts daemonic ranks, which multiprocessing forbids to start DataLoader workers.
    # The parent still kills this rank at the end, and the workers exit with their parent.
    multiprocessing.current_process().daemon = False
    runs = []
    for _ in range(2):
        seed_everything(11, workers=True)  # same seed on every rank
        loader = DataLoader(_WorkerRandom(), batch_size=1, num_workers=2, multiprocessing_context="fork")
        wrapped = DeviceDataLoader(distributed_dataloader(loader, num_replicas=world_size, rank=rank))
        runs.append(torch.cat(list(wrapped)).tolist())
    assert runs[0] == runs[1], "not reproducible"
    return _gather(runs[0])


def test_seeded_workers_have_distinct_streams_per_rank_and_worker() -> None:
    per_rank, _ = run_processes(_worker_streams, 2, timeout=60)
    values = [value for rows in per_rank for row in rows for value in row[1:]]
    assert len(values) == 2 * 4 * 2
    assert len(set(values)) == len(values)  # no two (rank, worker) streams repeat a number
    assert {row[0] for rows in per_rank for row in rows} == {0.0, 1.0}
