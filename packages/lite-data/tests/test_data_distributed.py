"""distributed_dataloader and DistributedSamplerWrapper in one process (explicit ranks)."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from lite_data import (
    DataLoaderError,
    DistributedSamplerWrapper,
    distributed_dataloader,
    has_iterable_dataset,
    record_dataloader_arguments,
    recorded_arguments,
    seed_everything,
    worker_init_function,
)


def _collate(batch: list[int]) -> torch.Tensor:
    return torch.tensor(batch) * 10


def _init(worker_id: int) -> None:
    pass


_GENERATOR = torch.Generator().manual_seed(5)
_FORK = multiprocessing.get_context("fork")

# (argument, value the user gave, how to read it back from the re-created loader)
_ARGUMENTS: list[tuple[str, Any]] = [
    ("batch_size", 3),
    ("batch_size", None),
    ("drop_last", True),
    ("num_workers", 2),
    ("collate_fn", _collate),
    ("pin_memory", True),
    ("timeout", 7.0),
    ("worker_init_fn", _init),
    ("generator", _GENERATOR),
    ("prefetch_factor", 5),
    ("persistent_workers", True),
    ("multiprocessing_context", _FORK),
    ("pin_memory_device", "cpu"),
    ("in_order", False),
]


@pytest.mark.parametrize(("name", "value"), _ARGUMENTS, ids=[f"{n}={v!r}"[:40] for n, v in _ARGUMENTS])
def test_every_argument_is_preserved(seed_env: pytest.MonkeyPatch, name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {name: value}
    if name in ("prefetch_factor", "persistent_workers", "multiprocessing_context", "timeout", "in_order"):
        kwargs["num_workers"] = 1  # these need workers
    original = DataLoader(list(range(20)), **kwargs)
    new = distributed_dataloader(original, num_replicas=2, rank=1)
    assert type(new) is DataLoader
    assert new is not original
    for arg, given in kwargs.items():
        assert getattr(new, arg) is given or getattr(new, arg) == given, arg
    assert isinstance(new.sampler, DistributedSampler)
    assert (new.sampler.num_replicas, new.sampler.rank) == (2, 1)
    assert new.dataset is original.dataset


def test_defaults_are_preserved() -> None:
    original = DataLoader(list(range(10)))
    new = distributed_dataloader(original, num_replicas=2, rank=0)
    for arg in (
        "batch_size",
        "num_workers",
        "collate_fn",
        "pin_memory",
        "drop_last",
        "timeout",
        "prefetch_factor",
    ):
        assert getattr(new, arg) == getattr(original, arg), arg
    assert new.collate_fn is default_collate
    assert new.generator is None and new.worker_init_fn is None


@pytest.mark.parametrize(("shuffle", "expected"), [(True, True), (False, False), (None, False)])
def test_shuffle_is_kept(shuffle: bool | None, expected: bool) -> None:
    new = distributed_dataloader(DataLoader(list(range(10)), shuffle=shuffle), num_replicas=2, rank=0, seed=9)
    assert isinstance(new.sampler, DistributedSampler)
    assert new.sampler.shuffle is expected
    assert new.sampler.seed == 9


def _ranks(loader: DataLoader[Any], world: int) -> list[list[Any]]:
    return [list(distributed_dataloader(loader, num_replicas=world, rank=r)) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_share_the_dataset_disjointly(world: int, shuffle: bool) -> None:
    loader = DataLoader(list(range(12)), batch_size=2, shuffle=shuffle)
    per_rank = [torch.cat(batches).tolist() for batches in _ranks(loader, world)]
    assert sorted(itertools.chain(*per_rank)) == list(range(12))
    assert all(len(p) == 12 // world for p in per_rank)


class _EvensFirst(Sampler[int]):
    """A custom, deterministic order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter([*range(0, self.n, 2), *range(1, self.n, 2)])

    def __len__(self) -> int:
        return self.n


class _PairsBatchSampler(Sampler[list[int]]):
    """A custom batch sampler: batches of uneven size."""

    def __init__(self, n: int) -> None:
        self.batches = [list(range(i, min(i + 1 + i % 3, n))) for i in range(0, n, 3)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_custom_sampler_is_wrapped_and_dealt_out() -> None:
    loader = DataLoader(list(range(12)), sampler=_EvensFirst(12), batch_size=2, drop_last=True)
    per_rank = _ranks(loader, 2)
    new = distributed_dataloader(loader, num_replicas=2, rank=0)
    assert isinstance(new.sampler, DistributedSamplerWrapper)
    assert type(new.batch_sampler) is BatchSampler and new.drop_last
    flat = [torch.cat(b).tolist() for b in per_rank]
    assert flat[0] == [0, 4, 8, 1, 5, 9]  # every other item of the custom order
    assert sorted(flat[0] + flat[1]) == list(range(12))


def test_custom_batch_sampler_is_wrapped_and_dealt_out() -> None:
    batch_sampler = _PairsBatchSampler(12)
    loader = DataLoader(list(range(12)), batch_sampler=batch_sampler)
    new = distributed_dataloader(loader, num_replicas=2, rank=1)
    assert isinstance(new.batch_sampler, DistributedSamplerWrapper)
    assert new.batch_sampler.sampler is batch_sampler
    per_rank = [[b.tolist() for b in batches] for batches in _ranks(loader, 2)]
    assert per_rank[0] + per_rank[1] != [] and sorted(per_rank[0] + per_rank[1]) == sorted(
        batch_sampler.batches
    )
    assert per_rank[0] == batch_sampler.batches[0::2]


def test_wrapper_pads_like_distributed_sampler_and_forwards_set_epoch() -> None:
    class _Epoched(SequentialSampler):
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    inner = _Epoched(range(5))
    shares = [list(DistributedSamplerWrapper(inner, 2, r)) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 0]]
    wrapper = DistributedSamplerWrapper(inner, 2, 0, shuffle=True, seed=1)
    wrapper.set_epoch(3)
    assert inner.epoch == 3
    orders = {tuple(wrapper) for _ in range(2)}
    assert len(orders) == 1
    wrapper.set_epoch(4)
    assert tuple(wrapper) not in orders  # another epoch, another order


def test_wrapper_needs_a_length() -> None:
    with pytest.raises(DataLoaderError, match="__len__"):
        DistributedSamplerWrapper(iter(range(3)), 2, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("num_replicas", "rank"), [(0, 0), (2, 2), (2, -1), (2, 1.0), ("2", 0)])
def test_bad_replicas_or_rank(num_replicas: Any, rank: Any) -> None:
    with pytest.raises(DataLoaderError, match=r"num_replicas|rank"):
        distributed_dataloader(DataLoader(list(range(4))), num_replicas=num_replicas, rank=rank)


def test_not_a_dataloader() -> None:
    with pytest.raises(DataLoaderError, match=r"expects a torch\.utils\.data\.DataLoader"):
        distributed_dataloader([1, 2], num_replicas=1, rank=0)  # type: ignore[arg-type]


class _Stream(IterableDataset[int]):
    def __iter__(self) -> Iterator[int]:
        return iter(range(4))


def test_iterable_dataset_is_left_alone_with_a_warning() -> None:
    loader = DataLoader(_Stream(), batch_size=2)
    assert has_iterable_dataset(loader)
    assert not has_iterable_dataset(DataLoader(list(range(3))))
    with pytest.warns(UserWarning, match="IterableDataset.*Shard it"):
        assert distributed_dataloader(loader, num_replicas=2, rank=0) is loader


def test_loader_already_distributed_is_returned_unchanged() -> None:
    data = list(range(8))
    loader = DataLoader(data, sampler=DistributedSampler(data, num_replicas=2, rank=0))
    assert distributed_dataloader(loader, num_replicas=2, rank=0) is loader


class _StoresItsArguments(DataLoader[Any]):
    def __init__(self, dataset: Any, scale: int, *, tag: str = "x", **kwargs: Any) -> None:
        self.scale = scale
        self.tag = tag
        super().__init__(dataset, **kwargs)


class _LosesAnArgument(DataLoader[Any]):
    def __init__(self, dataset: Any, scale: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)


class _NoSamplerParameter(DataLoader[Any]):
    def __init__(self, dataset: Any, batch_size: int = 1) -> None:
        super().__init__(dataset, batch_size=batch_size, shuffle=True)


class _ForcesShuffle(DataLoader[Any]):
    def __init__(self, dataset: Any, sampler: Any = None) -> None:
        super().__init__(dataset, sampler=sampler, shuffle=True)


def test_subclass_is_recreated_with_its_own_arguments() -> None:
    loader = _StoresItsArguments(list(range(8)), 3, tag="y", batch_size=2, shuffle=True, num_workers=0)
    new = distributed_dataloader(loader, num_replicas=2, rank=0)
    assert type(new) is _StoresItsArguments
    assert (new.scale, new.tag, new.batch_size) == (3, "y", 2)
    assert isinstance(new.sampler, DistributedSampler) and new.sampler.shuffle


def test_subclass_with_unrecoverable_argument_raises() -> None:
    loader = _LosesAnArgument(list(range(8)), 3, batch_size=2)
    with pytest.raises(
        DataLoaderError, match=r"requires 'scale'.*self\.scale = scale.*replace_sampler=False"
    ):
        distributed_dataloader(loader, num_replicas=2, rank=0)


def test_subclass_without_sampler_parameter_raises() -> None:
    with pytest.raises(DataLoaderError, match="does not accept 'sampler'"):
        distributed_dataloader(_NoSamplerParameter(list(range(8))), num_replicas=2, rank=0)


def test_subclass_whose_constructor_rejects_the_sampler_raises() -> None:
    with pytest.raises(DataLoaderError, match=r"failed.*mutually exclusive"):
        distributed_dataloader(_ForcesShuffle(list(range(8))), num_replicas=2, rank=0)


def test_worker_seeding_is_installed_after_seed_everything_workers(seed_env: pytest.MonkeyPatch) -> None:
    loader = DataLoader(list(range(8)), num_workers=1)
    assert distributed_dataloader(loader, num_replicas=2, rank=1).worker_init_fn is None
    seed_everything(1, workers=True)
    installed = distributed_dataloader(loader, num_replicas=2, rank=1).worker_init_fn
    assert isinstance(installed, functools.partial)
    assert installed.func is worker_init_function and installed.keywords == {"rank": 1}
    mine = DataLoader(list(range(8)), num_workers=1, worker_init_fn=_init)
    assert distributed_dataloader(mine, num_replicas=2, rank=1).worker_init_fn is _init
    assert os.environ["PL_SEED_WORKERS"] == "1"


def test_random_sampler_subclass_is_treated_as_custom() -> None:
    class _MyRandom(RandomSampler):
        pass

    loader = DataLoader(
        list(range(8)), sampler=_MyRandom(list(range(8)), generator=torch.Generator().manual_seed(0))
    )
    assert isinstance(
        distributed_dataloader(loader, num_replicas=2, rank=0).sampler, DistributedSamplerWrapper
    )


# -- constructor arguments recorded inside record_dataloader_arguments() -------------------------------


class _RootLoader(DataLoader):
    """Uses `root` (required) to build its dataset and does not store it."""

    def __init__(self, root: int, batch_size: int = 1, **kwargs: Any) -> None:
        super().__init__(list(range(root, root + 6)), batch_size=batch_size, **kwargs)


def test_a_subclass_created_in_a_recording_block_is_recreated_from_its_arguments() -> None:
    with record_dataloader_arguments():
        loader = _RootLoader(10, batch_size=2, shuffle=True)

        class Defined(DataLoader):  # a class defined inside the block records too
            def __init__(self, start: int, *, sampler: Any = None) -> None:
                super().__init__(list(range(start, start + 4)), sampler=sampler)

        defined = Defined(7)
    assert recorded_arguments(loader) == ((10,), {"batch_size": 2, "shuffle": True})
    shares = [distributed_dataloader(loader, num_replicas=2, rank=rank, seed=3) for rank in (0, 1)]
    assert all(type(share) is _RootLoader and share.batch_size == 2 for share in shares)
    seen = [int(i) for share in shares for batch in share for i in batch]
    assert sorted(seen) == list(range(10, 16))
    assert shares[0].sampler.shuffle and shares[0].sampler.seed == 3
    new = distributed_dataloader(defined, num_replicas=2, rank=1)
    assert type(new) is Defined and [int(b) for b in new] == [8, 10]


def test_outside_a_recording_block_the_missing_argument_is_named() -> None:
    with pytest.raises(DataLoaderError, match=r"'root'.*record_dataloader_arguments"):
        distributed_dataloader(_RootLoader(10), num_replicas=2, rank=0)
    assert recorded_arguments(_RootLoader(10)) is None


def test_recording_blocks_nest_and_restore_every_class_even_on_error() -> None:
    before = _RootLoader.__init__
    with pytest.raises(KeyError), record_dataloader_arguments():
        with record_dataloader_arguments():
            pass
        assert _RootLoader.__init__ is not before  # the outer block still records
        assert recorded_arguments(_RootLoader(1)) == ((1,), {})
        raise KeyError("boom")
    assert _RootLoader.__init__ is before
    assert "__init_subclass__" not in DataLoader.__dict__


def test_a_subclass_that_cannot_take_the_sampler_says_so() -> None:
    class Fixed(DataLoader):
        def __init__(self, size: int) -> None:
            super().__init__(list(range(size)))

    with record_dataloader_arguments():
        loader = Fixed(4)
    with pytest.raises(DataLoaderError, match="does not accept 'sampler'"):
        distributed_dataloader(loader, num_replicas=2, rank=0)


def test_the_shuffle_seed_defaults_to_the_seed_everything_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    new = distributed_dataloader(DataLoader(list(range(10)), shuffle=True), num_replicas=2, rank=0)
    assert new.sampler.seed == 11
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert (
        distributed_dataloader(DataLoader(list(range(10)), shuffle=True), num_replicas=2, rank=0).sampler.seed
        == 0
    )


def test_an_unsized_sampler_is_a_type_error() -> None:
    class Unsized(Sampler[int]):
        def __iter__(self) -> Iterator[int]:
            return iter(range(3))

    with pytest.raises(TypeError, match="__len__"):
        distributed_dataloader(DataLoader(list(range(3)), sampler=Unsized()), num_replicas=2, rank=0)
