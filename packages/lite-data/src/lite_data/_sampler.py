"""A DistributedSampler over what any sampler (or batch sampler) yields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

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
    and deals it out like :class:`torch.utils.data.DistributedSampler`: padded by
    repetition to a multiple of ``num_replicas`` (or cut with ``drop_last=True``),
    optionally shuffled with ``seed + epoch``. ``sampler`` must have a length and yield the
    same sequence on every rank (deterministic, or seeded alike). :meth:`set_epoch` is
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

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of this sampler's shuffle and of the wrapped sampler (when it has one)."""
        super().set_epoch(epoch)
        inner_set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(inner_set_epoch):
            inner_set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        items: _SamplerItems = self.dataset  # type: ignore[assignment]
        items.reset()
        return (items[index] for index in super().__iter__())
