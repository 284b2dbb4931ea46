"""Re-create a DataLoader with a distributed sampler, from the arguments stored on the instance."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from lite_data._errors import DataLoaderError
from lite_data._record import recorded_arguments
from lite_data._sampler import DistributedSamplerWrapper, UnpaddedDistributedSampler, check_replicas
from lite_data._seed import SEED_ENV, seed_workers_requested, worker_init_function

# DataLoader's own constructor parameters (``in_order`` and later ones included where this
# torch has them). The sampling ones are decided here; the rest are read back from the instance.
_LOADER_PARAMS = tuple(name for name in inspect.signature(DataLoader.__init__).parameters if name != "self")
_SAMPLING_PARAMS = ("shuffle", "sampler", "batch_sampler")


def has_iterable_dataset(dataloader: DataLoader[Any]) -> bool:
    """Whether ``dataloader`` reads an `IterableDataset` (no sampler to replace)."""
    return isinstance(getattr(dataloader, "dataset", None), IterableDataset)


def _has_distributed_sampler(dataloader: DataLoader[Any]) -> bool:
    batch_sampler = dataloader.batch_sampler
    return (
        isinstance(dataloader.sampler, DistributedSampler)
        or isinstance(getattr(batch_sampler, "sampler", None), DistributedSampler)
        or isinstance(batch_sampler, DistributedSampler)
    )


def _sampling_kwargs(
    dataloader: DataLoader[Any], num_replicas: int, rank: int, seed: int, even: bool = True
) -> dict[str, Any]:
    """The sampler arguments of the re-created loader: a disjoint share of the original's order."""
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        # A custom batch sampler: deal its batches out. DataLoader wants the batch options at defaults.
        wrapped = DistributedSamplerWrapper(
            batch_sampler, num_replicas, rank, shuffle=False, seed=seed, even=even
        )
        return {
            "batch_sampler": wrapped,
            "batch_size": 1,
            "shuffle": False,
            "sampler": None,
            "drop_last": False,
        }
    sampler = dataloader.sampler
    new_sampler: Sampler[Any]
    if isinstance(sampler, (RandomSampler, SequentialSampler)) and type(sampler) in (
        RandomSampler,
        SequentialSampler,
    ):
        new_sampler = (DistributedSampler if even else UnpaddedDistributedSampler)(
            dataloader.dataset,  # type: ignore[arg-type]  # sized: a map-style dataset
            num_replicas=num_replicas,
            rank=rank,
            shuffle=isinstance(sampler, RandomSampler),
            seed=seed,
        )
    else:
        new_sampler = DistributedSamplerWrapper(
            sampler, num_replicas, rank, shuffle=False, seed=seed, even=even
        )
    return {"sampler": new_sampler, "shuffle": False, "batch_sampler": None}


def _sampler_seed() -> int:
    """The seed ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0: the same on every rank."""
    raw = os.environ.get(SEED_ENV, "").strip()
    try:
        return int(raw)
    except ValueError:
        return 0


def _recorded_call(
    dataloader: DataLoader[Any], recorded: tuple[tuple[Any, ...], dict[str, Any]], overrides: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The recorded constructor call of ``type(dataloader)`` with the sampling arguments replaced."""
    cls = type(dataloader)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    bound = inspect.Signature(params).bind(*recorded[0], **recorded[1])
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
    extra = dict(bound.arguments.get(var_keyword, {})) if var_keyword is not None else {}
    for key, value in overrides.items():
        if key in named:
            bound.arguments[key] = value
        elif var_keyword is not None:
            extra[key] = value
        elif key in ("sampler", "batch_sampler") and value is not None:
            raise DataLoaderError(
                f"Cannot re-create {cls.__name__} with a distributed sampler: its __init__ does not accept "
                f"{key!r} (nor **kwargs), so the sampler cannot be injected. Add a `{key}` parameter that "
                "is passed on to DataLoader.__init__, or keep your sampler "
                "(setup_dataloaders(..., replace_sampler=False))."
            )
    if var_keyword is not None:
        bound.arguments[var_keyword] = extra
    return list(bound.args), dict(bound.kwargs)


def _constructor_call(
    dataloader: DataLoader[Any], kwargs: dict[str, Any], overrides: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Map ``kwargs`` onto the constructor of ``type(dataloader)``; fill its own parameters from attributes.

    A loader created inside [`record_dataloader_arguments`][lite_data.record_dataloader_arguments] is re-created from the
    arguments it was called with, ``overrides`` (the sampling arguments) replaced.
    """
    cls = type(dataloader)
    if cls is DataLoader:
        return [], kwargs
    recorded = recorded_arguments(dataloader)
    if recorded is not None:
        return _recorded_call(dataloader, recorded, overrides)
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args: list[Any] = []
    call_kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for name, param in list(params.items())[1:]:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if name in kwargs:
            value = kwargs[name]
        elif hasattr(dataloader, name):
            value = getattr(dataloader, name)
        elif param.default is inspect.Parameter.empty:
            missing.append(name)
            continue
        else:
            continue  # not recoverable, but optional: the subclass default applies
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            call_kwargs[name] = value
    if missing:
        raise DataLoaderError(
            f"Cannot re-create {cls.__name__} with a distributed sampler: its __init__ requires "
            f"{', '.join(repr(m) for m in missing)}, which is not stored as a same-named attribute. "
            f"Create the loader inside `LightningLite.run()` (or a `record_dataloader_arguments()` block), "
            f"store each such argument on the instance (`self.{missing[0]} = {missing[0]}` in __init__), "
            "or keep your sampler (setup_dataloaders(..., replace_sampler=False)) and shard the data yourself."
        )
    if takes_kwargs:
        call_kwargs.update({k: v for k, v in kwargs.items() if k not in params})
    needed = [k for k in ("sampler", "batch_sampler") if kwargs.get(k) is not None]
    not_accepted = [k for k in needed if k not in params and not takes_kwargs]
    if not_accepted:
        raise DataLoaderError(
            f"Cannot re-create {cls.__name__} with a distributed sampler: its __init__ does not accept "
            f"{not_accepted[0]!r} (nor **kwargs), so the sampler cannot be injected. Add a "
            f"`{not_accepted[0]}` parameter that is passed on to DataLoader.__init__, "
            "or keep your sampler (setup_dataloaders(..., replace_sampler=False))."
        )
    return args, call_kwargs


def distributed_dataloader(
    dataloader: DataLoader[Any], *, num_replicas: int, rank: int, seed: int | None = None, even: bool = True
) -> DataLoader[Any]:
    """Return a copy of ``dataloader`` whose sampler gives rank ``rank`` a disjoint share of the data.

    The copy is built with the same class and every argument read back from the instance
    (batch size, workers, collate_fn, pin_memory, generator, ...). Its sampler is:

    - a `DistributedSampler` (shuffling with ``seed`` iff the
      original shuffled) for DataLoader's own random or sequential sampler;
    - a [`DistributedSamplerWrapper`][lite_data.DistributedSamplerWrapper] around a custom sampler or custom batch sampler,
      which must yield the same sequence on every rank.

    With ``even=False`` the shares are not padded to the same length (an
    [`UnpaddedDistributedSampler`][lite_data.UnpaddedDistributedSampler], or the wrapper with ``even=False``): every sample is on
    exactly one rank, for exact evaluation; the ranks' lengths then differ by at most one.

    ``seed`` (the shuffle's seed, the same on every rank) defaults to the one
    [`seed_everything`][lite_data.seed_everything] set (``PL_GLOBAL_SEED``), else 0. A DataLoader subclass created
    inside [`record_dataloader_arguments`][lite_data.record_dataloader_arguments] is re-created from its constructor's arguments.

    A loader that already has a DistributedSampler, and one over an IterableDataset (with a
    warning: shard it yourself), are returned unchanged. After ``seed_everything(...,
    workers=True)`` a loader with workers and no ``worker_init_fn`` gets
    [`worker_init_function`][lite_data.worker_init_function] for this rank. Call ``sampler.set_epoch(epoch)`` each
    epoch, or iterate through [`DeviceDataLoader`][lite_data.DeviceDataLoader], which does.

    Raises:
        DataLoaderError: ``rank`` is not in ``[0, num_replicas)``, or a DataLoader subclass
            cannot be re-created (a required ``__init__`` argument is not stored as a
            same-named attribute, or it does not accept ``sampler``).
        UnsizedSamplerError: a custom sampler without ``__len__`` (also a ``TypeError``).
    """
    check_replicas(num_replicas, rank, "distributed_dataloader")
    if not isinstance(dataloader, DataLoader):
        raise DataLoaderError(
            f"distributed_dataloader expects a torch.utils.data.DataLoader, got {type(dataloader).__name__}."
        )
    if has_iterable_dataset(dataloader):
        warnings.warn(
            f"The DataLoader reads an IterableDataset ({type(dataloader.dataset).__name__}), which has no "
            "sampler to replace: it is left unchanged and every rank sees the full stream. Shard it inside "
            "the dataset's __iter__ (using the rank and torch.utils.data.get_worker_info()).",
            UserWarning,
            stacklevel=2,
        )
        return dataloader
    if _has_distributed_sampler(dataloader):
        return dataloader

    kwargs = {
        name: getattr(dataloader, name)
        for name in _LOADER_PARAMS
        if name not in _SAMPLING_PARAMS and hasattr(dataloader, name)
    }
    overrides = _sampling_kwargs(
        dataloader, num_replicas, rank, _sampler_seed() if seed is None else seed, even
    )
    if kwargs.get("worker_init_fn") is None and kwargs.get("num_workers", 0) > 0 and seed_workers_requested():
        overrides["worker_init_fn"] = functools.partial(worker_init_function, rank=rank)
    kwargs.update(overrides)
    args, call_kwargs = _constructor_call(dataloader, kwargs, overrides)
    try:
        return type(dataloader)(*args, **call_kwargs)
    except (TypeError, ValueError) as exc:
        raise DataLoaderError(
            f"Re-creating {type(dataloader).__name__} with a distributed sampler failed: {exc}. Make its "
            "__init__ accept and pass on DataLoader's arguments (sampler, shuffle, batch_size, ...), "
            "or keep your sampler (setup_dataloaders(..., replace_sampler=False))."
        ) from exc
