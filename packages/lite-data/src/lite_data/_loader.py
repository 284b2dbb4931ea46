"""A DataLoader wrapper that moves batches to a device, sets the sampler's epoch and can resume mid-epoch."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from lite_data._errors import DataLoaderError
from lite_data._seed import seed_workers_requested, worker_init_function
from lite_devices import move_to_device

_STATE_KEYS = ("epoch", "batches_yielded")


def _samplers(dataloader: DataLoader[Any]) -> list[Any]:
    """The loader's sampler, batch sampler and the batch sampler's sampler, each once."""
    found: list[Any] = []
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for candidate in (
        getattr(dataloader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        if candidate is not None and all(candidate is not f for f in found):
            found.append(candidate)
    return found


class DeviceDataLoader:
    """Iterate ``dataloader`` with every batch moved to ``device`` (``None``: batches untouched).

    Each new iteration is a new epoch: it calls ``set_epoch(epoch)`` on the loader's
    (batch) sampler where there is one, so a `DistributedSampler`
    reshuffles without the user calling it. ``len()`` is the original's, ``.dataloader``
    is the original, and other attributes are read from it. [`state_dict`][lite_data.DeviceDataLoader.state_dict] and
    [`load_state_dict`][lite_data.DeviceDataLoader.load_state_dict] resume a run mid-epoch with the very next batch.

    Examples:
        >>> loader = DeviceDataLoader(DataLoader(range(6), batch_size=2), device="cpu")
        >>> [batch.tolist() for batch in loader]
        [[0, 1], [2, 3], [4, 5]]
    """

    def __init__(self, dataloader: DataLoader[Any], device: torch.device | str | int | None = None) -> None:
        self.dataloader: DataLoader[Any] = (
            dataloader.dataloader if isinstance(dataloader, DeviceDataLoader) else dataloader
        )
        try:
            self.device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise DataLoaderError(
                f"DeviceDataLoader(device={device!r}): not a device ({exc}); pass a torch.device, "
                "a string such as 'cpu' or 'cuda:0', or None to leave batches where they are."
            ) from None
        self._epoch = 0  # the epoch of the current (or next) iteration
        self._batches_yielded = 0  # in that epoch
        self._in_epoch = False  # an iteration of ``_epoch`` has started and not finished
        self._skip = 0  # batches to skip at the next iteration (set by load_state_dict)
        self._generator_states: list[torch.Tensor] | None = None  # at the start of ``_epoch``
        self._restore_generators: list[torch.Tensor] | None = None
        self._epoch_rng: torch.Tensor | None = None  # torch's global RNG state at the start of ``_epoch``
        self._resume_rng: torch.Tensor | None = None  # set by load_state_dict for a mid-epoch resume

    def __len__(self) -> int:
        return len(self.dataloader)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; guard against lookups before __init__ ran (unpickling).
        if name == "dataloader":
            raise AttributeError(name)
        return getattr(self.dataloader, name)

    @property
    def epoch(self) -> int:
        """The epoch of the current iteration, or of the next one when none is in progress."""
        return self._epoch

    def _generators(self) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        for owner in (self.dataloader, *_samplers(self.dataloader)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
        return found

    def _distributed_sampler(self) -> DistributedSampler[Any] | None:
        for sampler in _samplers(self.dataloader):
            if isinstance(sampler, DistributedSampler):
                return sampler
        return None

    def _start_epoch(self) -> None:
        if self._in_epoch:  # the previous iteration was left early: this is a new epoch
            self._epoch += 1
        self._in_epoch = True
        self._batches_yielded = 0
        self._epoch_rng = torch.get_rng_state()  # what the loader's iterator will draw its seeds from
        for sampler in _samplers(self.dataloader):
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self._epoch)
        generators = self._generators()
        if self._restore_generators is not None and len(self._restore_generators) == len(generators):
            for gen, state in zip(generators, self._restore_generators):
                gen.set_state(state)
        self._restore_generators = None
        self._generator_states = [gen.get_state() for gen in generators]
        loader = self.dataloader
        if loader.num_workers > 0 and loader.worker_init_fn is None and seed_workers_requested():
            sampler = self._distributed_sampler()
            rank = sampler.rank if sampler is not None else None
            loader.worker_init_fn = functools.partial(worker_init_function, rank=rank)

    def __iter__(self) -> Iterator[Any]:
        resume_rng, self._resume_rng = self._resume_rng, None
        skip, self._skip = self._skip, 0
        self._start_epoch()
        if resume_rng is not None:
            self._epoch_rng = resume_rng  # a save later in this epoch keeps the interrupted epoch's start
        device = self.device
        non_blocking = bool(device is not None and device.type == "cuda" and self.dataloader.pin_memory)
        batches = self._resumed_batches(skip, resume_rng) if skip else iter(self.dataloader)
        self._batches_yielded = skip
        for batch in batches:
            if device is not None:
                batch = move_to_device(batch, device, non_blocking=non_blocking)
            self._batches_yielded += 1
            yield batch
        self._in_epoch = False
        self._epoch += 1
        self._batches_yielded = 0

    def _resumed_batches(self, skip: int, epoch_rng: torch.Tensor | None) -> Iterator[Any]:
        """The epoch's batches after the first ``skip``, drawn as the interrupted epoch drew them.

        The loader's iterator takes its seeds (worker base seed, a generator-less sampler's
        shuffle) from torch's global RNG when it starts. Here it starts under the global RNG
        state saved at the start of the interrupted epoch, which then goes back to the state it
        had (the one a checkpoint restored for the training step). Where the loader batches a
        map-style dataset through a batch sampler, the skipped batches are skipped as indices
        and never loaded; otherwise they are loaded and dropped.
        """
        current = torch.get_rng_state() if epoch_rng is not None else None
        if epoch_rng is not None:
            torch.set_rng_state(epoch_rng)
        try:
            skipping = _skipping_loader(self.dataloader, skip)
            iterator = iter(skipping if skipping is not None else self.dataloader)
            if skipping is None:  # not index-skippable: load the consumed batches and drop them
                for _ in range(skip):
                    if next(iterator, _END) is _END:
                        break
            first = next(iterator, _END)
        finally:
            if current is not None:
                torch.set_rng_state(current)
        if first is _END:
            return
        yield first
        yield from iterator

    def state_dict(self) -> dict[str, Any]:
        """Where sampling stands: ``epoch``, ``batches_yielded`` in it, and what fixes its order.

        The order is fixed by ``set_epoch`` on a distributed sampler (``sampler_seed``,
        ``num_replicas``, ``rank`` are saved) and by the loader's and sampler's
        ``torch.Generator`` states at the start of the epoch (``generator_states``). A loader
        that shuffles with the global RNG and no generator resumes at the right batch count,
        but not in the same order.
        """
        sampler = self._distributed_sampler()
        if self._in_epoch:
            generator_states = self._generator_states
        else:
            generator_states = [gen.get_state() for gen in self._generators()]
        return {
            "epoch": self._epoch,
            "batches_yielded": self._batches_yielded if self._in_epoch else self._skip,
            "sampler_seed": sampler.seed if sampler is not None else None,
            "num_replicas": sampler.num_replicas if sampler is not None else None,
            "rank": sampler.rank if sampler is not None else None,
            "generator_states": None if generator_states is None else [s.clone() for s in generator_states],
            "global_rng_state": self._epoch_rng.clone()
            if self._in_epoch and self._epoch_rng is not None
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from [`state_dict`][lite_data.DeviceDataLoader.state_dict]: the next iteration is epoch ``state["epoch"]``, minus its consumed batches."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise DataLoaderError(
                f"DeviceDataLoader.load_state_dict: the state lacks {missing}; "
                "pass what DeviceDataLoader.state_dict() returned."
            )
        epoch, yielded = state["epoch"], state["batches_yielded"]
        for key, value in (("epoch", epoch), ("batches_yielded", yielded)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DataLoaderError(
                    f"DeviceDataLoader.load_state_dict: {key}={value!r}; it must be an integer >= 0."
                )
        sampler = self._distributed_sampler()
        saved_replicas = state.get("num_replicas")
        if yielded and sampler is not None and saved_replicas not in (None, sampler.num_replicas):
            raise DataLoaderError(
                f"DeviceDataLoader.load_state_dict: the state was saved with num_replicas={saved_replicas}, "
                f"this loader's sampler has {sampler.num_replicas}; a mid-epoch resume needs the same "
                "number of processes (or resume at an epoch boundary: batches_yielded=0)."
            )
        if sampler is not None and state.get("sampler_seed") is not None:
            sampler.seed = state["sampler_seed"]
        self._epoch = epoch
        self._skip = yielded
        self._batches_yielded = 0
        self._in_epoch = False
        states = state.get("generator_states")
        self._restore_generators = None if states is None else list(states)
        rng = state.get("global_rng_state")
        self._resume_rng = rng if yielded and isinstance(rng, torch.Tensor) else None


_END = object()


class _SkipFirst:
    """A batch sampler that leaves out its first ``skip`` batches of indices."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def _skipping_loader(loader: DataLoader[Any], skip: int) -> DataLoader[Any] | None:
    """A one-epoch copy of ``loader`` whose batch sampler skips ``skip`` batches, or None where that is unsafe.

    Only a plain DataLoader over a map-style dataset with automatic batching qualifies: a
    subclass may iterate differently, and an iterable dataset has no indices to skip.
    """
    if type(loader) is not DataLoader or loader.batch_sampler is None or has_iterable(loader):
        return None
    if skip == 0:
        return loader
    kwargs: dict[str, Any] = {
        "batch_sampler": _SkipFirst(loader.batch_sampler, skip),
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


def has_iterable(loader: DataLoader[Any]) -> bool:
    return isinstance(loader.dataset, torch.utils.data.IterableDataset)
