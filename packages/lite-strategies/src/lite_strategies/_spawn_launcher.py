"""Start one process per local device with multiprocessing ("spawn" or "fork")."""

from __future__ import annotations

import ast
import io
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from lite_strategies._errors import ProcessFailedError, StrategyError
from lite_strategies._launcher import (
    describe_exit,
    rank_environment,
    run_in_this_process,
    start_parent_watchdog,
    stop_processes,
)

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

START_METHODS = ("spawn", "fork")

MAIN_GUARD_MESSAGE = dedent(
    """
    Launching processes with the 'spawn' start method re-imports your main module in each new
    process, so the code that launches them must be guarded by `if __name__ == "__main__":`.
    For example:

        def main():
            # Put your code here
            ...

        if __name__ == "__main__":
            main()

    Alternatively, use strategy="ddp" (re-runs the script) or, on Linux/macOS, strategy="ddp_fork".
    """
).strip()


def check_start_method(start_method: str) -> None:
    """Raise :class:`StrategyError` if ``start_method`` is unknown or not available on this platform."""
    if start_method not in START_METHODS:
        raise StrategyError(f"start_method {start_method!r} is not one of {list(START_METHODS)}")
    if start_method not in mp.get_all_start_methods():
        raise StrategyError(
            f"the {start_method!r} start method is not available on {sys.platform}; "
            f"available: {mp.get_all_start_methods()}. Use strategy='ddp_spawn' or 'ddp'"
        )


class SpawnLauncher:
    """Run a function in one new process per local device; return rank 0's value to the caller.

    The value comes back through ``torch.save`` into bytes (tensors on the CPU), so it survives
    the child exiting. An exception in any rank stops the others and is raised here as
    :class:`ProcessFailedError` with that rank's traceback (its ``__cause__`` is the original
    exception when it could be pickled). When the cluster environment creates the processes
    (torchrun, SLURM, MPI) the function runs in this process instead.
    """

    def __init__(self, strategy: Strategy, start_method: str = "spawn") -> None:
        check_start_method(start_method)
        self._strategy = strategy
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        """Only 'fork' works from a notebook: 'spawn' must import the function by name."""
        return self.start_method == "fork"

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start the processes, run ``fn(*args, **kwargs)`` in each, return local rank 0's value."""
        strategy = self._strategy
        env = strategy.cluster_environment
        if getattr(mp.current_process(), "_inheriting", False):
            # The main module is being re-imported in a spawned child: it is not guarded.
            raise StrategyError(MAIN_GUARD_MESSAGE)
        if env.creates_processes_externally:
            return run_in_this_process(strategy, fn, args, kwargs)
        self._check_can_start(fn)
        address, port = env.main_address, env.main_port
        ctx = mp.get_context(self.start_method)
        procs: list[Any] = []
        readers: list[Connection] = []
        try:
            for local_rank in range(strategy.num_processes):
                recv, send = ctx.Pipe(duplex=False)
                variables = rank_environment(strategy, local_rank, address, port)
                proc = ctx.Process(  # type: ignore[attr-defined]
                    target=_worker,
                    args=(local_rank, strategy, fn, args, kwargs, variables, send, os.getpid()),
                    name=f"lite-rank-{variables['RANK']}",
                )
                try:
                    proc.start()
                except (pickle.PicklingError, AttributeError, TypeError) as exc:
                    raise StrategyError(
                        f"could not send the function, its arguments or the strategy to the new processes "
                        f"({type(exc).__name__}: {exc}). With start_method='spawn' they must be picklable "
                        f"(define functions at module level); or use strategy='ddp' or 'ddp_fork'"
                    ) from exc
                finally:
                    send.close()
                procs.append(proc)
                readers.append(recv)
            return self._collect(procs, readers)
        finally:
            stop_processes(procs)
            for r in readers:
                r.close()

    def _check_can_start(self, fn: Callable[..., Any]) -> None:
        if self.start_method == "fork":
            if torch.cuda.is_initialized():
                raise StrategyError(
                    "cannot fork processes: CUDA is already initialized in this process and a forked "
                    "child cannot use it. Do not touch CUDA (tensors, torch.cuda calls) before launching, "
                    "or use strategy='ddp_spawn' or 'ddp'"
                )
            return
        import __main__

        if getattr(fn, "__module__", None) == "__main__" and not getattr(__main__, "__file__", None):
            raise StrategyError(
                f"{getattr(fn, '__qualname__', fn)!r} is defined in an interactive session, which processes "
                f"started with 'spawn' cannot import. Use strategy='ddp_notebook' (fork), or define it in a file"
            )
        line = _unguarded_main_line()
        if line is not None:
            raise StrategyError(
                f"{MAIN_GUARD_MESSAGE}\n(the launch comes from line {line} of your main module)"
            )

    def _collect(self, procs: list[Any], readers: list[Connection]) -> Any:
        strategy = self._strategy
        first_rank = strategy.node_rank * strategy.num_processes
        pending = set(range(len(procs)))
        result: Any = None
        while pending:
            handles: list[Any] = [readers[i] for i in pending] + [procs[i].sentinel for i in pending]
            ready = wait(handles, timeout=1.0)
            for i in sorted(pending):
                if not (readers[i] in ready or procs[i].sentinel in ready):
                    continue
                message = _receive(readers[i])
                if message is None:
                    procs[i].join(1.0)
                    code = procs[i].exitcode
                    raise ProcessFailedError(
                        f"rank {first_rank + i} {describe_exit(code)} before reporting a result "
                        f"(its output is above); the other processes were stopped",
                        rank=first_rank + i,
                        exitcode=code,
                    )
                pending.discard(i)
                if message[0] == "ok":
                    if i == 0:
                        result = torch.load(io.BytesIO(message[1]), map_location="cpu", weights_only=False)
                    continue
                _, summary, remote_tb, pickled = message
                cause = _unpickle(pickled)
                error = ProcessFailedError(
                    f"rank {first_rank + i} raised {summary}; the other processes were stopped.\n\n"
                    f"Traceback from rank {first_rank + i}:\n{remote_tb}",
                    rank=first_rank + i,
                    remote_traceback=remote_tb,
                )
                if cause is not None:
                    raise error from cause
                raise error
        for p in procs:
            p.join(10.0)
        return result


def _receive(conn: Connection) -> tuple[Any, ...] | None:
    try:
        if not conn.poll(0.05):
            return None
        message: tuple[Any, ...] = pickle.loads(conn.recv_bytes())
        return message
    except (EOFError, OSError):
        return None


def _unpickle(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        exc = pickle.loads(data)
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def _worker(
    local_rank: int,
    strategy: Strategy,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    variables: dict[str, str],
    conn: Connection,
    parent_pid: int,
) -> None:
    os.environ.update(variables)
    start_parent_watchdog(parent_pid)
    try:
        value = run_in_this_process(strategy, fn, args, kwargs)
        payload: tuple[Any, ...] = ("ok", _to_bytes(value) if local_rank == 0 else None)
    except BaseException as exc:
        payload = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), _pickle_or_none(exc))
    try:
        conn.send_bytes(pickle.dumps(payload))
    except Exception as exc:
        message = f"its return value could not be sent back ({type(exc).__name__}: {exc})"
        conn.send_bytes(pickle.dumps(("error", message, traceback.format_exc(), None)))
    conn.close()
    strategy.teardown()


def _to_bytes(value: Any) -> bytes:
    # torch.save copies tensor storages into the bytes: torch.multiprocessing would share
    # them through shared memory, which goes away with this process.
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _pickle_or_none(exc: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return None


def _unguarded_main_line() -> int | None:
    """The line of the main module that is launching at top level outside a ``__main__`` guard, if any."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is None or not main_file:
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(main_file).read_text())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
            and node.lineno <= line <= (node.end_lineno or node.lineno)
        ):
            return None
    return line
