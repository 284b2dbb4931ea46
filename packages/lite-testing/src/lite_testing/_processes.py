"""Run a function in N real processes on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


class DistributedTestError(RuntimeError):
    """A rank raised, died or did not finish in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    init: bool,
    timeout: float,
    env: dict[str, str],
    channel: str,
) -> None:
    os.environ.update(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
        NODE_RANK="0",
    )
    try:
        if init:
            import torch.distributed as dist

            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=timeout),
            )
        result = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException as exc:
        payload = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        if init:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    try:
        data = pickle.dumps(payload)
    except Exception as exc:
        payload = ("error", f"result of rank {rank} cannot be pickled: {exc}")
        data = pickle.dumps(payload)
    tmp = Path(channel) / f"{rank}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, Path(channel) / f"{rank}.pickle")
    if payload[0] == "error":
        sys.exit(1)  # torch's ProcessContext sees the failure at once and stops the others


def _read(channel: str, rank: int) -> tuple[str, Any] | None:
    try:
        payload: tuple[str, Any] = pickle.loads((Path(channel) / f"{rank}.pickle").read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    return payload


def run_processes(
    fn: Callable[..., Any],
    world_size: int = 2,
    *args: Any,
    init: bool = True,
    timeout: float = 60.0,
    start_method: str = "fork",
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` processes and return their results.

    With ``init=True`` each process first joins a gloo process group on 127.0.0.1 whose
    collectives time out after ``timeout`` seconds. The whole run is bounded by
    ``timeout`` plus a margin: a rank that raises, dies or hangs fails the call with a
    `DistributedTestError` naming the rank, and every other rank is stopped.
    ``fn`` must be picklable when ``start_method="spawn"`` (a module-level function).
    The processes are started and watched by ``torch.multiprocessing.start_processes``.
    """
    port = free_port()
    limit = timeout + 30.0
    with tempfile.TemporaryDirectory(prefix="lite-testing-") as channel:
        context = mp.start_processes(
            _child,
            args=(world_size, port, fn, args, init, timeout, dict(env or {}), channel),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        errors: list[str] = []
        first: int | None = None
        deadline = time.monotonic() + limit
        try:
            while not context.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())), grace_period=3.0):
                if time.monotonic() >= deadline:
                    pending = [r for r, p in enumerate(context.processes) if p.is_alive()]
                    errors.append(f"ranks {pending} did not finish within {limit:.0f} s")
                    break
        except ProcessException as exc:
            first = exc.error_index
        finally:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
                p.join(5)
        results: dict[int, Any] = {}
        deaths: list[str] = []
        for rank in sorted(range(world_size), key=lambda r: r != first):  # the failure seen first on top
            payload = _read(channel, rank)
            if payload is not None and payload[0] == "ok":
                results[rank] = payload[1]
            elif payload is not None:
                errors.append(f"rank {rank} failed:\n{payload[1]}")
            elif rank == first or not errors:
                deaths.append(f"rank {rank} died with exit code {context.processes[rank].exitcode}")
        errors = errors + deaths if errors else deaths
    if errors:
        raise DistributedTestError("\n".join(errors))
    return [results[r] for r in range(world_size)]
