"""DeviceDataLoader: device moves, epochs, attribute fall-through and mid-epoch resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from lite_data import DataLoaderError, DeviceDataLoader, distributed_dataloader

_DATA = [{"x": torch.tensor([float(i)]), "i": i} for i in range(10)]


def test_len_dataloader_and_attribute_fall_through() -> None:
    loader = DataLoader(_DATA, batch_size=3)
    wrapped = DeviceDataLoader(loader)
    assert len(wrapped) == len(loader) == 4
    assert wrapped.dataloader is loader
    assert wrapped.batch_size == 3 and wrapped.dataset is _DATA
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute
    assert DeviceDataLoader(wrapped).dataloader is loader  # no double wrapping


def test_device_none_leaves_batches_untouched() -> None:
    sentinel = object()
    loader = DataLoader([0, 1], batch_size=None, collate_fn=lambda _: sentinel)
    assert list(DeviceDataLoader(loader)) == [sentinel, sentinel]


def test_batches_are_moved_to_the_device() -> None:
    # A "meta" target proves the move happens without a GPU; cpu tensors would be returned as they are.
    batches = list(DeviceDataLoader(DataLoader(_DATA, batch_size=5), device="meta"))
    assert len(batches) == 2
    assert all(b["x"].device.type == "meta" for b in batches)
    on_cpu = list(DeviceDataLoader(DataLoader(_DATA, batch_size=5), device=torch.device("cpu")))
    assert torch.equal(on_cpu[1]["x"], torch.arange(5.0, 10.0).unsqueeze(1))


def test_bad_device() -> None:
    with pytest.raises(DataLoaderError, match="not a device"):
        DeviceDataLoader(DataLoader(_DATA), device="nonsense")


class _RecordingSampler(SequentialSampler):
    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_set_epoch_at_each_iteration_and_epochs_counted() -> None:
    sampler = _RecordingSampler(_DATA)
    wrapped = DeviceDataLoader(DataLoader(_DATA, sampler=sampler, batch_size=4))
    for _ in range(2):
        list(wrapped)
    assert wrapped.epoch == 2
    for _ in wrapped:  # leaving early still counts as an epoch
        break
    list(wrapped)
    assert sampler.epochs == [0, 1, 2, 3]


def test_distributed_sampler_reshuffles_each_epoch() -> None:
    loader = distributed_dataloader(DataLoader(list(range(40)), shuffle=True), num_replicas=2, rank=0)
    wrapped = DeviceDataLoader(loader)
    epochs = [torch.cat(list(wrapped)).tolist() for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert sorted(epochs[0]) != list(range(40))  # half the data
    assert len(epochs[0]) == len(epochs[1]) == 20


def _take(iterator: Iterator[Any], n: int) -> list[Any]:
    return [next(iterator) for _ in range(n)]


def _distributed_loader() -> DataLoader[Any]:
    return distributed_dataloader(
        DataLoader(list(range(50)), batch_size=2, shuffle=True), num_replicas=2, rank=1, seed=4
    )


def _generator_loader() -> DataLoader[Any]:
    return DataLoader(list(range(50)), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(8))


@pytest.mark.parametrize("make", [_distributed_loader, _generator_loader], ids=["distributed", "generator"])
@pytest.mark.parametrize("epoch", [0, 1])
def test_resume_mid_epoch_continues_with_the_next_batch(make: Any, epoch: int) -> None:
    original = DeviceDataLoader(make())
    for _ in range(epoch):
        list(original)
    iterator = iter(original)
    _take(iterator, 3)
    state = original.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (epoch, 3)
    rest = list(iterator)

    resumed = DeviceDataLoader(make())
    if epoch:  # a fresh loader would otherwise draw another order: prove the state restores it
        list(resumed)
    resumed.load_state_dict(state)
    resumed_rest = list(resumed)
    assert [b.tolist() for b in resumed_rest] == [b.tolist() for b in rest]
    assert resumed.epoch == epoch + 1
    # the epoch after the resumed one is the same as the original's next epoch
    assert [b.tolist() for b in resumed] == [b.tolist() for b in original]


def test_state_between_epochs() -> None:
    wrapped = DeviceDataLoader(_distributed_loader())
    list(wrapped)
    state = wrapped.state_dict()
    assert state["epoch"] == 1 and state["batches_yielded"] == 0
    assert (state["sampler_seed"], state["num_replicas"], state["rank"]) == (4, 2, 1)
    fresh = DeviceDataLoader(_distributed_loader())
    fresh.load_state_dict(state)
    assert fresh.state_dict()["epoch"] == 1
    assert [b.tolist() for b in fresh] == [b.tolist() for b in wrapped]


def test_load_restores_sampler_seed() -> None:
    saved = DeviceDataLoader(_distributed_loader()).state_dict()
    other = DeviceDataLoader(
        distributed_dataloader(
            DataLoader(list(range(50)), batch_size=2, shuffle=True), num_replicas=2, rank=1
        )
    )
    other.load_state_dict(saved)
    sampler = other.dataloader.sampler
    assert isinstance(sampler, DistributedSampler) and sampler.seed == 4


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"epoch": 0}, "lacks"),
        ({"epoch": -1, "batches_yielded": 0}, "epoch=-1"),
        ({"epoch": 0, "batches_yielded": "3"}, "batches_yielded='3'"),
        ({"epoch": 0, "batches_yielded": 3, "num_replicas": 4}, "num_replicas=4"),
    ],
)
def test_load_state_dict_rejects_bad_states(state: dict[str, Any], match: str) -> None:
    with pytest.raises(DataLoaderError, match=match):
        DeviceDataLoader(_distributed_loader()).load_state_dict(state)


def test_worker_seeding_is_installed_on_iteration_after_seed_everything_workers(
    seed_env: pytest.MonkeyPatch,
) -> None:
    import functools

    from lite_data import seed_everything, worker_init_function

    def make() -> DataLoader[Any]:
        return distributed_dataloader(
            DataLoader(list(range(4)), num_workers=1, multiprocessing_context="fork"), num_replicas=2, rank=1
        )

    plain, seeded = DeviceDataLoader(make()), DeviceDataLoader(make())
    next(iter(plain))
    assert plain.dataloader.worker_init_fn is None
    seed_everything(0, workers=True)
    assert seeded.dataloader.worker_init_fn is None  # installed when iteration starts
    next(iter(seeded))
    installed = seeded.dataloader.worker_init_fn
    assert isinstance(installed, functools.partial)
    assert installed.func is worker_init_function and installed.keywords == {"rank": 1}
