"""A DistributedSampler over what any sampler (or batch sampler) yields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from lite_data._errors import DataLoaderError, UnsizedSamplerError


class _SamplerItems(Dataset[Any]):
    """What a sampler yields in one pass, as a dataset that DistributedSampler can index into."""

    def __init__(self, sampler: Iterable[Any]) -> None:
        self.sampler = sampler
        self._items: list[Any] | None = None

    def reset(self) -> None:
        self._items = list(self.sampler)

    def __getitem__(self, index: int) -> Any:
        if self._items is None:
            self.reset()
        assert self._items is not None
        return self._items[index]

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def check_replicas(num_replicas: Any, rank: Any, where: str) -> None:
    """Raise DataLoaderError unless ``0 <= rank < num_replicas``."""
    if not isinstance(num_replicas, int) or isinstance(num_replicas, bool) or num_replicas < 1:
        raise DataLoaderError(f"{where}: num_replicas={num_replicas!r}; it must be an integer >= 1.")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
        raise DataLoaderError(
            f"{where}: rank={rank!r} with num_replicas={num_replicas}; "
            f"the rank must be an integer in [0, {num_replicas - 1}]."
        )


class DistributedSamplerWrapper(DistributedSampler[Any]):
    """Give rank ``rank`` of ``num_replicas`` a disjoint share of what ``sampler`` yields.

    Each pass lists what ``sampler`` yields (indices, or index lists of a batch sampler)
    and deals it out like `torch.utils.data.DistributedSampler`: padded by
    repetition to a multiple of ``num_replicas`` (or cut with ``drop_last=True``),
    optionally shuffled with ``seed + epoch``; with ``even=False`` not padded (as
    [`UnpaddedDistributedSampler`][lite_data.UnpaddedDistributedSampler]). ``sampler`` must have a length and yield the
    same sequence on every rank (deterministic, or seeded alike). [`set_epoch`][lite_data.DistributedSamplerWrapper.set_epoch] is
    passed on to ``sampler`` when it has one.
    """

    def __init__(
        self,
        sampler: Iterable[Any],
        num_replicas: int,
        rank: int,
        shuffle: bool = False,
        seed: int = 0,
        *,
        drop_last: bool = False,
        even: bool = True,
    ) -> None:
        check_replicas(num_replicas, rank, "DistributedSamplerWrapper")
        if not isinstance(sampler, Sized):
            raise UnsizedSamplerError(
                f"DistributedSamplerWrapper: {type(sampler).__name__} has no __len__, so it cannot be "
                "split across ranks; give the sampler a __len__, or keep it as it is with "
                "setup_dataloaders(..., replace_sampler=False) and shard the data yourself."
            )
        super().__init__(
            _SamplerItems(sampler),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.sampler = sampler
        self.even = even
        if not even:
            self.num_samples = len(range(rank, len(sampler), num_replicas))
            self.total_size = len(sampler)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of this sampler's shuffle and of the wrapped sampler (when it has one)."""
        super().set_epoch(epoch)
        inner_set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(inner_set_epoch):
            inner_set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        items: _SamplerItems = self.dataset  # type: ignore[assignment]
        items.reset()
        order = super().__iter__() if self.even else iter(unpadded_indices(self))
        return (items[index] for index in order)


def unpadded_indices(sampler: DistributedSampler[Any]) -> list[int]:
    """This rank's indices of a whole pass, every index on exactly one rank (no padding, no cut)."""
    n = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.shuffle:
        generator = torch.Generator()
        generator.manual_seed(sampler.seed + sampler.epoch)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    return order[sampler.rank :: sampler.num_replicas]


class UnpaddedDistributedSampler(DistributedSampler[Any]):
    """A `DistributedSampler` that neither pads nor cuts: for exact evaluation.

    Rank ``r`` gets positions ``r, r + num_replicas, r + 2 * num_replicas, ...`` of the pass's
    order (the dataset's, or a permutation seeded with ``seed + epoch`` on every rank alike), so
    every sample is seen exactly once over all ranks and the ranks' lengths differ by at most
    one. 7 samples on 2 ranks: 4 and 3 (the padded sampler gives 4 and 4, one sample twice).
    Training on it would leave the ranks with different numbers of steps: use it to evaluate.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        check_replicas(num_replicas, rank, "UnpaddedDistributedSampler")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(unpadded_indices(self))

    def __len__(self) -> int:
        return self.num_samples
