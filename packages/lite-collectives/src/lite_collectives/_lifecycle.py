"""Starting and stopping the default process group, with every wait bounded."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from lite_collectives._environment import ClusterEnvironment, check_rank, check_world_size
from lite_collectives._environments import detect_environment
from lite_collectives._errors import ClusterEnvironmentError, CollectiveError, CollectiveTimeoutError
from lite_collectives._watchdog import current_broken, start_watch, stop_watch

#: Bounds every collective. Long on purpose: a legitimate wait (rank 0 writing a checkpoint, one
#: rank evaluating) must not kill the run, and the watchdog reports real divergence in seconds.
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: Bounds the rendezvous (every process joining), at most ``timeout``: processes of one job start
#: within seconds to a minute even on a busy cluster, so a missing one is reported after 5 minutes.
DEFAULT_RENDEZVOUS_TIMEOUT = timedelta(minutes=5)

#: How long the exit handler lets the backend's threads finish with the GIL released (seconds).
EXIT_SETTLE_S = 0.02

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

    Examples:
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
    rendezvous_timeout: timedelta | float = DEFAULT_RENDEZVOUS_TIMEOUT,
) -> None:
    """Join the default process group described by ``environment`` (default: [`detect_environment`][lite_collectives.detect_environment]).

    Sets ``MASTER_ADDR`` / ``MASTER_PORT`` from the environment (restored by
    [`destroy_process_group`][lite_collectives.destroy_process_group]), picks the backend from ``device_type`` unless ``backend`` is
    given, and bounds every later collective by ``timeout`` (a timedelta or seconds; default
    30 minutes) and the rendezvous by ``min(timeout, rendezvous_timeout)`` (default 5 minutes).
    Rank 0 opens the rendezvous socket itself: on 127.0.0.1 only when the main address is a
    loopback one (a single-node run; gloo then also uses the loopback interface), else on the
    main address. A second call with the same settings does nothing; conflicting settings raise
    [`CollectiveError`][lite_collectives.CollectiveError]. A port already taken raises [`ClusterEnvironmentError`][lite_collectives.ClusterEnvironmentError];
    a rendezvous that not every process joins raises [`CollectiveTimeoutError`][lite_collectives.CollectiveTimeoutError] naming how
    many ranks joined and which are missing.

    Examples:
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
    rendezvous = min(timeout, as_timeout(rendezvous_timeout, "rendezvous_timeout"))
    saved = tuple((name, os.environ.get(name)) for name in ("MASTER_ADDR", "MASTER_PORT"))
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    loopback = _is_loopback(address)
    gloo_ifname = os.environ.get(_GLOO_IFNAME)
    if backend == "gloo" and loopback and gloo_ifname is None:
        os.environ[_GLOO_IFNAME] = _loopback_interface()  # gloo's sockets stay on loopback too
    try:
        store = _rendezvous(address, port, rank, size, rendezvous, env)
        dist.init_process_group(backend, store=store, world_size=size, rank=rank, timeout=timeout)
    except (ClusterEnvironmentError, CollectiveTimeoutError):
        _restore_env(saved)
        raise
    except RuntimeError as exc:
        _restore_env(saved)
        raise _rendezvous_error(exc, address, port, rank, size, rendezvous) from exc
    except BaseException:
        _restore_env(saved)
        raise
    finally:
        if gloo_ifname is None:
            os.environ.pop(_GLOO_IFNAME, None)
    _record = _GroupRecord(backend, size, rank, address, port, timeout, saved)
    start_watch(dist.group.WORLD, store, timeout.total_seconds())


_GLOO_IFNAME = "GLOO_SOCKET_IFNAME"
#: Set by torchrun when its agent already serves the store on MASTER_PORT: every rank is a client.
_AGENT_STORE_VAR = "TORCHELASTIC_USE_AGENT_STORE"


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _loopback_interface() -> str:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    return next((n for n in names if n.startswith("lo")), "lo")


def _listen(address: str, port: int, rank: int, size: int, rendezvous: timedelta) -> socket.socket:
    """Rank 0's rendezvous socket: bound here, so the port is ours from now on (no pick-then-bind race)."""
    where = f"{address}:{port} (rank {rank} of {size}, timeout {rendezvous.total_seconds():g} s)"
    host = "127.0.0.1" if _is_loopback(address) and ":" not in address else address
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ClusterEnvironmentError(f"rank 0 cannot resolve the main address {where}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(max(128, size))
    except OSError as exc:
        sock.close()
        if exc.errno == 98 or "in use" in str(exc).lower():
            raise ClusterEnvironmentError(
                f"rank 0 cannot listen on {where}: the port is already taken by another program or job; "
                f"set MASTER_PORT to a free port. ({exc})"
            ) from None
        raise ClusterEnvironmentError(
            f"rank 0 cannot listen on {where}: {exc}. Rank 0 must run on the machine MASTER_ADDR names."
        ) from None
    return sock


def _rendezvous(
    address: str, port: int, rank: int, size: int, rendezvous: timedelta, env: ClusterEnvironment
) -> Any:
    """The store every rank meets at, once all ``size`` ranks joined it (bounded by ``rendezvous``)."""
    if size == 1:
        return dist.HashStore()
    agent = os.environ.get(_AGENT_STORE_VAR, "").lower() in ("1", "true")
    where = f"{address}:{port} (rank {rank} of {size}, timeout {rendezvous.total_seconds():g} s)"
    store: Any
    if rank == 0 and not agent:
        sock = _listen(address, port, rank, size, rendezvous)
        fd = sock.detach()  # the store's server owns it from here
        try:
            store = dist.TCPStore(
                address, port, size, True, rendezvous, wait_for_workers=False, master_listen_fd=fd
            )
        except BaseException:
            os.close(fd)
            raise
    else:
        try:
            store = dist.TCPStore(address, port, size, False, rendezvous)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CollectiveTimeoutError(
                f"rendezvous at {where} timed out: rank {rank} could not reach the store of rank 0 at "
                f"{address}:{port}. Check that rank 0 started and that every process agrees on "
                f"MASTER_ADDR={address} and MASTER_PORT={port}, or raise rendezvous_timeout. ({first})"
            ) from exc
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"lite_collectives/attempt_{attempt}", store)
    node = env.node_rank()
    store.set(f"joined/{rank}", f"{socket.gethostname()} (node {node})")
    store.add("joined", 1)
    deadline = time.monotonic() + rendezvous.total_seconds()
    while int(store.add("joined", 0)) < size:
        if time.monotonic() > deadline:
            joined = [r for r in range(size) if store.check([f"joined/{r}"])]
            missing = [r for r in range(size) if r not in joined]
            nodes = sorted(
                {store.get(f"joined/{r}").decode().split(" (node ")[-1].rstrip(")") for r in joined}
            )
            raise CollectiveTimeoutError(
                f"rendezvous at {where} timed out: {len(joined)} of {size} ranks joined "
                f"(from node(s) {', '.join(nodes)}); missing rank(s): {', '.join(map(str, missing))}. "
                f"Check that every node started its processes with the same MASTER_ADDR={address} and "
                f"MASTER_PORT={port}, or raise rendezvous_timeout."
            )
        time.sleep(0.05)
    return store


def destroy_process_group() -> None:
    """Leave and destroy the default process group (nothing to do when none runs)."""
    global _record
    stop_watch("left")
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


def shutdown_at_exit() -> None:
    """At interpreter exit: tell the other ranks this one exited, then destroy the group lite made.

    Runs from ``atexit``, while ``torch.distributed`` and the backend are still whole; left to
    the end of the process instead, the group's threads can be destroyed while still joinable
    (``terminate called without an active exception``, exit code -6). Then it waits
    `EXIT_SETTLE_S` with the GIL released, so the backend's threads finish releasing the last
    collective's tensors before the interpreter finalizes. A group broken by a
    timeout or a divergence may still have a backend operation in flight: it is not destroyed
    (that would wait for the operation), the process just exits.
    """
    broken = current_broken()
    stop_watch("exited")
    if broken is None and _record is not None and dist.is_available() and dist.is_initialized():
        destroy_process_group()
    # The backend's worker thread drops its references to a finished collective's tensors only
    # once it holds the GIL (to free their Python objects). The main thread may reach the
    # interpreter's finalization first, with that thread still waiting: it then exits the thread
    # in the middle of C++ code and the process aborts. The group may also outlive destroy
    # (a DDP module still references it), so its threads are not joined. A short sleep here,
    # with the GIL released, lets every such thread finish before finalization starts.
    time.sleep(EXIT_SETTLE_S)
