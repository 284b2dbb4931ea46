"""Seeding Python, NumPy and torch, and giving every (rank, worker) its own random stream."""

from __future__ import annotations

import hashlib
import operator
import os
import random
import warnings
from typing import Any

import torch

from lite_data._errors import SeedError

# The names LightningLite uses, so processes started by either agree on the seed.
SEED_ENV = "PL_GLOBAL_SEED"
WORKERS_ENV = "PL_SEED_WORKERS"

# NumPy's legacy ``np.random.seed`` takes unsigned 32-bit seeds; we accept the same range everywhere.
MIN_SEED = 0
MAX_SEED = 2**32 - 1


def _random_seed() -> int:
    return random.SystemRandom().randint(MIN_SEED, MAX_SEED)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool):
        raise SeedError(f"seed_everything(seed={seed!r}): a seed must be an integer, not a bool.")
    try:
        value = operator.index(seed) if not isinstance(seed, str) else int(seed)
    except (TypeError, ValueError):
        raise SeedError(
            f"seed_everything(seed={seed!r}): a seed must be an integer in [{MIN_SEED}, {MAX_SEED}]."
        ) from None
    if not MIN_SEED <= value <= MAX_SEED:
        raise SeedError(
            f"seed_everything(seed={value}): out of range; NumPy accepts seeds in [{MIN_SEED}, {MAX_SEED}]."
        )
    return value


def _seed_from_env() -> int:
    raw = os.environ.get(SEED_ENV)
    if raw is None:
        seed = _random_seed()
        warnings.warn(f"No seed given and {SEED_ENV} is not set: seed set to {seed}.", stacklevel=3)
        return seed
    try:
        return _check_seed(raw.strip())
    except SeedError:
        seed = _random_seed()
        warnings.warn(
            f"{SEED_ENV}={raw!r} is not an integer in [{MIN_SEED}, {MAX_SEED}]: seed set to {seed}.",
            stacklevel=3,
        )
        return seed


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed Python's ``random``, NumPy (when installed) and torch on every device; return the seed.

    Args:
        seed: an integer in ``[0, 2**32 - 1]``. ``None`` reads ``PL_GLOBAL_SEED`` from the
            environment; when that is unset or invalid a random seed is chosen, with a warning.
        workers: also give every DataLoader worker of every rank its own reproducible stream:
            [`distributed_dataloader`][lite_data.distributed_dataloader] and [`DeviceDataLoader`][lite_data.DeviceDataLoader] then install
            [`worker_init_function`][lite_data.worker_init_function] on loaders that have no ``worker_init_fn``.

    Sets ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS`` so that processes started later agree
    (LightningLite uses the same names). An explicit seed that is not an integer in range
    raises [`SeedError`][lite_data.SeedError].

    Examples:
        >>> seed_everything(42)
        42
    """
    value = _seed_from_env() if seed is None else _check_seed(seed)
    os.environ[SEED_ENV] = str(value)
    os.environ[WORKERS_ENV] = str(int(bool(workers)))
    random.seed(value)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(value)
    torch.manual_seed(value)  # seeds every device's generator too
    return value


def reset_seed() -> None:
    """Seed again with ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS``; do nothing when no seed was set.

    Useful in a process started after [`seed_everything`][lite_data.seed_everything] ran in its parent.
    """
    raw = os.environ.get(SEED_ENV)
    if raw is None:
        return
    seed_everything(int(raw), workers=os.environ.get(WORKERS_ENV, "0") == "1")


def seed_workers_requested() -> bool:
    """Whether [`seed_everything`][lite_data.seed_everything] was called with ``workers=True`` (here or in a parent process)."""
    return os.environ.get(WORKERS_ENV, "0") == "1"


def _current_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _derive_seeds(base_seed: int, worker_id: int, rank: int, count: int) -> list[int]:
    """``count`` well-mixed 64-bit seeds from (base seed, worker, rank), like NumPy's SeedSequence."""
    digest = hashlib.blake2b(
        f"lite_data:{base_seed}:{worker_id}:{rank}".encode(), digest_size=8 * count
    ).digest()
    return [int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(count)]


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Seed torch, ``random`` and NumPy in a DataLoader worker with a stream distinct per (rank, worker).

    Pass it as ``worker_init_fn`` (with ``functools.partial(worker_init_function, rank=r)``
    to name the rank; by default the process group's rank, else ``RANK``, else 0). The
    streams derive from the loader's base seed, so they are reproducible after
    [`seed_everything`][lite_data.seed_everything], and differ across ranks, which torch's default does not do.
    """
    if rank is None:
        rank = _current_rank()
    # torch seeds worker ``i`` with ``base_seed + i``: back out the base seed.
    base_seed = torch.initial_seed() - worker_id
    torch_seed, python_seed, numpy_seed = _derive_seeds(base_seed, worker_id, rank, 3)
    torch.manual_seed(torch_seed)
    random.seed(python_seed)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed([numpy_seed & 0xFFFFFFFF, numpy_seed >> 32])
