"""Starting and stopping the default process group, with every wait bounded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from lite_collectives._environment import ClusterEnvironment, check_rank, check_world_size
from lite_collectives._environments import detect_environment
from lite_collectives._errors import ClusterEnvironmentError, CollectiveError, CollectiveTimeoutError

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Device type -> the backend that runs collectives on it.
_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "mps": "gloo", "xla": "xla"}


@dataclass(frozen=True)
class _GroupRecord:
    """What init_process_group started, to compare a second call against and to undo."""

    backend: str
    world_size: int
    rank: int
    address: str
    port: int
    timeout: timedelta
    saved_env: tuple[tuple[str, str | None], ...]


_record: _GroupRecord | None = None


def default_backend(device_type: str) -> str:
    """The backend for collectives on ``device_type``: gloo on cpu/mps, nccl on cuda, xla on xla.

    >>> default_backend("cuda")
    'nccl'
    """
    backend = _BACKENDS.get(str(device_type).lower())
    if backend is None:
        raise CollectiveError(
            f"no default process-group backend for device type {device_type!r}; "
            f"accepted: {', '.join(_BACKENDS)} (or pass backend=... explicitly)."
        )
    return backend


def as_timeout(timeout: timedelta | float | int, what: str = "timeout") -> timedelta:
    """Turn seconds or a timedelta into a positive timedelta."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        timeout = timedelta(seconds=timeout)
    if not isinstance(timeout, timedelta) or timeout.total_seconds() <= 0:
        raise CollectiveError(f"{what} must be a positive timedelta or number of seconds, got {timeout!r}.")
    return timeout


def group_timeout() -> timedelta | None:
    """The default process group's timeout, when it can be known."""
    if _record is not None and dist.is_initialized():
        return _record.timeout
    try:
        pg = dist.distributed_c10d._get_default_group()
        import torch

        found = pg._get_backend(torch.device("cpu")).options._timeout
        return found if isinstance(found, timedelta) else None
    except Exception:  # the lookup is best effort: private API, backend-specific
        return None


def init_process_group(
    environment: ClusterEnvironment | None = None,
    *,
    backend: str | None = None,
    device_type: str = "cpu",
    timeout: timedelta | float = DEFAULT_TIMEOUT,
) -> None:
    """Join the default process group described by ``environment`` (default: :func:`detect_environment`).

    Sets ``MASTER_ADDR`` / ``MASTER_PORT`` from the environment (restored by
    :func:`destroy_process_group`), picks the backend from ``device_type`` unless ``backend`` is
    given, and bounds the rendezvous and every later collective by ``timeout`` (a timedelta or
    seconds). A second call with the same settings does nothing; conflicting settings raise
    :class:`CollectiveError`. A port already taken raises :class:`ClusterEnvironmentError`;
    a rendezvous that not every process joins raises :class:`CollectiveTimeoutError`.

    >>> init_process_group()  # doctest: +SKIP
    >>> world_size(), global_rank()  # doctest: +SKIP
    (1, 0)
    """
    global _record
    if not dist.is_available():
        raise CollectiveError("this torch build has no torch.distributed; install a build with it.")
    backend = (backend or default_backend(device_type)).lower()
    timeout = as_timeout(timeout)
    env = environment if environment is not None else detect_environment()
    size = check_world_size(int(env.world_size()))
    rank = check_rank(int(env.global_rank()))
    if rank >= size:
        raise ClusterEnvironmentError(
            f"{type(env).__name__} reports global rank {rank} but world size {size}; ranks run 0..{size - 1}."
        )
    if dist.is_initialized():
        _check_matches_running_group(env, backend, size, rank, timeout)
        return
    if not dist.is_backend_available(backend):
        available = [b for b in ("gloo", "nccl", "mpi", "ucc", "xla") if dist.is_backend_available(b)]
        raise CollectiveError(
            f"backend {backend!r} is not available in this torch build; available: {', '.join(available)}. "
            "Pass backend=... or a device_type whose backend is available."
        )
    address, port = _main_address_and_port(env)
    saved = tuple((name, os.environ.get(name)) for name in ("MASTER_ADDR", "MASTER_PORT"))
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    try:
        dist.init_process_group(backend, init_method="env://", world_size=size, rank=rank, timeout=timeout)
    except RuntimeError as exc:
        _restore_env(saved)
        raise _rendezvous_error(exc, address, port, rank, size, timeout) from exc
    except BaseException:
        _restore_env(saved)
        raise
    _record = _GroupRecord(backend, size, rank, address, port, timeout, saved)


def destroy_process_group() -> None:
    """Leave and destroy the default process group (nothing to do when none runs)."""
    global _record
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _record is not None:
        _restore_env(_record.saved_env)
        _record = None


def _main_address_and_port(env: ClusterEnvironment) -> tuple[str, int]:
    address = str(env.main_address).strip()
    if not address:
        raise ClusterEnvironmentError(
            f"{type(env).__name__} gave an empty main address; export MASTER_ADDR=<host of rank 0>."
        )
    try:
        port = int(env.main_port)
    except (TypeError, ValueError):
        raise ClusterEnvironmentError(
            f"{type(env).__name__} gave main port {env.main_port!r}, which is not an integer."
        ) from None
    if not 0 < port < 65536:
        raise ClusterEnvironmentError(f"{type(env).__name__} gave main port {port}; a port lies in 1..65535.")
    return address, port


def _check_matches_running_group(
    env: ClusterEnvironment, backend: str, size: int, rank: int, timeout: timedelta
) -> None:
    running = {"backend": str(dist.get_backend()).lower(), "world_size": dist.get_world_size()}
    running["rank"] = dist.get_rank()
    asked: dict[str, object] = {"backend": backend, "world_size": size, "rank": rank}
    if _record is not None:
        running.update(timeout=_record.timeout, address=_record.address, port=_record.port)
        asked["timeout"] = timeout
        asked["address"], asked["port"] = _main_address_and_port(env)
    conflicts = [f"{k}: running {running[k]!r}, asked {asked[k]!r}" for k in asked if running[k] != asked[k]]
    if conflicts:
        raise CollectiveError(
            "a process group is already initialized with other settings ("
            + "; ".join(conflicts)
            + "); call destroy_process_group() first, or init with the same settings."
        )


def _restore_env(saved: tuple[tuple[str, str | None], ...]) -> None:
    for name, value in saved:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _rendezvous_error(
    exc: RuntimeError, address: str, port: int, rank: int, size: int, timeout: timedelta
) -> Exception:
    text = str(exc)
    lowered = text.lower()
    where = f"{address}:{port} (rank {rank} of {size}, timeout {timeout.total_seconds():g} s)"
    if "eaddrinuse" in lowered or "address already in use" in lowered:
        return ClusterEnvironmentError(
            f"rank {rank} cannot listen on {where}: the port is already taken by another program or job; "
            f"set MASTER_PORT to a free port. ({text.splitlines()[0]})"
        )
    if "timed out" in lowered or "timeout" in lowered or isinstance(exc, dist.DistStoreError):
        return CollectiveTimeoutError(
            f"rendezvous at {where} timed out: not every process joined in time. Check that all {size} "
            f"processes started and agree on MASTER_ADDR={address} and MASTER_PORT={port}, or raise the "
            f"timeout. ({text.splitlines()[0]})"
        )
    return ClusterEnvironmentError(f"rendezvous at {where} failed: {text.splitlines()[0] if text else exc!r}")
