"""Start one process per local device with multiprocessing ("spawn" or "fork")."""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from lite_strategies._errors import StrategyError
from lite_strategies._spec import START_METHODS
from lite_strategies.launchers._base import rank_environment, run_in_this_process, start_parent_watchdog
from lite_strategies.launchers._join import ProcessReport, join_processes

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

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
    """Raise [`StrategyError`][lite_strategies.StrategyError] if ``start_method`` is unknown or not available on this platform."""
    if start_method not in START_METHODS:
        raise StrategyError(f"start_method {start_method!r} is not one of {list(START_METHODS)}")
    if start_method not in mp.get_all_start_methods():
        raise StrategyError(
            f"the {start_method!r} start method is not available on {sys.platform}; "
            f"available: {mp.get_all_start_methods()}. Use strategy='ddp_spawn' or 'ddp'"
        )


class SpawnLauncher:
    """Run a function in one new process per local device; return rank 0's value to the caller.

    The processes are started by ``torch.multiprocessing.start_processes`` and watched through
    its ``ProcessContext``. Rank 0's value comes back through a file written with ``torch.save``
    (tensors copied out of shared memory), so it survives the child exiting. An exception in
    any rank stops the others and is raised here as [`ProcessFailedError`][lite_strategies.ProcessFailedError] with that rank's
    traceback (its ``__cause__`` is the original exception when it could be pickled); when
    several ranks fail, the one that caused it is named (see `join_processes`). When the
    cluster environment creates the processes (torchrun, SLURM, MPI) the function runs in this
    process instead.
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
        variables = [rank_environment(strategy, i, address, port) for i in range(strategy.num_processes)]
        first_rank = int(variables[0]["RANK"])
        with tempfile.TemporaryDirectory(prefix="lite-launch-") as channel:
            try:
                context = mp.start_processes(
                    _worker,
                    args=(strategy, fn, args, kwargs, variables, channel, os.getpid()),
                    nprocs=strategy.num_processes,
                    join=False,
                    start_method=self.start_method,
                )
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                # The first process pickles what it runs before it exists: nothing was started.
                raise StrategyError(
                    f"could not send the function, its arguments or the strategy to the new processes "
                    f"({type(exc).__name__}: {exc}). With start_method='spawn' they must be picklable "
                    f"(define functions at module level); or use strategy='ddp' or 'ddp_fork'"
                ) from exc
            join_processes(context, first_rank, lambda i: _read_report(channel, i))
            result_file = Path(channel) / "result.pt"
            if not result_file.is_file():
                return None
            return torch.load(result_file, map_location="cpu", weights_only=False)

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


def _worker(
    local_rank: int,
    strategy: Strategy,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    variables: list[dict[str, str]],
    channel: str,
    parent_pid: int,
) -> None:
    """What each started process runs (``torch.multiprocessing`` calls it with the local rank first)."""
    os.environ.update(variables[local_rank])
    start_parent_watchdog(parent_pid)
    try:
        value = run_in_this_process(strategy, fn, args, kwargs)
        if local_rank == 0:
            # torch.save copies the storages into the file: torch.multiprocessing would share
            # them through shared memory, which goes away with this process.
            tmp = Path(channel) / "result.pt.tmp"
            torch.save(value, tmp)
            os.replace(tmp, Path(channel) / "result.pt")
    except BaseException as exc:
        _write_report(channel, local_rank, exc)
        with contextlib.suppress(Exception):
            strategy.teardown()
        sys.exit(1)  # the launcher reads the report; the exit code tells it there is one
    strategy.teardown()


def _write_report(channel: str, local_rank: int, exc: BaseException) -> None:
    report = ProcessReport(f"{type(exc).__name__}: {exc}", traceback.format_exc(), _pickle_or_none(exc))
    tmp = Path(channel) / f"rank-{local_rank}.tmp"
    tmp.write_bytes(pickle.dumps(report))
    os.replace(tmp, Path(channel) / f"rank-{local_rank}.report")


def _read_report(channel: str, local_rank: int) -> ProcessReport | None:
    try:
        report = pickle.loads((Path(channel) / f"rank-{local_rank}.report").read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    return report if isinstance(report, ProcessReport) else None


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
