"""Run a function in N real processes on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp


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
    conn: Any,
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
        conn.send(pickle.dumps(payload))
    except Exception as exc:
        conn.send(pickle.dumps(("error", f"result of rank {rank} cannot be pickled: {exc}")))
    conn.close()


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
    :class:`DistributedTestError` naming the rank, and every other rank is killed.
    ``fn`` must be picklable when ``start_method="spawn"`` (a module-level function).
    """
    ctx = mp.get_context(start_method)
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    procs = [
        ctx.Process(
            target=_child,
            args=(rank, world_size, port, fn, args, init, timeout, dict(env or {}), pipes[rank][1]),
            daemon=False,  # ranks may start DataLoader workers; the parent kills them at the end
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout + 30.0
    try:
        pending = set(range(world_size))
        while pending and time.monotonic() < deadline:
            for rank in sorted(pending):
                recv = pipes[rank][0]
                if recv.poll(0.05):
                    try:
                        status, value = pickle.loads(recv.recv())
                    except EOFError:
                        status, value = "error", f"exited with code {procs[rank].exitcode} before reporting"
                    pending.discard(rank)
                    if status == "ok":
                        results[rank] = value
                    else:
                        errors.append(f"rank {rank} failed:\n{value}")
                elif not procs[rank].is_alive() and not recv.poll(0.05):
                    pending.discard(rank)
                    errors.append(f"rank {rank} died with exit code {procs[rank].exitcode}")
            if errors:
                break
        if pending and not errors:
            errors.append(f"ranks {sorted(pending)} did not finish within {timeout + 30.0:.0f} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
    if errors:
        raise DistributedTestError("\n".join(errors))
    return [results[r] for r in range(world_size)]
