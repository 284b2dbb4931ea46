"""Waiting for processes started by ``torch.multiprocessing.start_processes`` and naming the one that failed first."""

from __future__ import annotations

import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lite_strategies._errors import ProcessFailedError
from lite_strategies.launchers._base import TERMINATE_GRACE_S, describe_exit, stop_processes

if TYPE_CHECKING:
    from torch.multiprocessing.spawn import ProcessContext


def is_peer_error(text: str) -> bool:
    """Whether an error text reads like the consequence of another process failing (a broken connection).

    A collective fails at once in every process when one of them dies, so such an error is
    never the root cause when another rank failed too.
    """
    text = text.lower()
    return any(
        word in text
        for word in (
            "connection closed",
            "connection reset",
            "broken pipe",
            "socket closed",
            "peer",
            "distbackenderror",
        )
    )


@dataclass(frozen=True)
class ProcessReport:
    """What a started process that raised tells its launcher: ``Type: message``, its traceback, the pickled exception."""

    summary: str
    traceback: str
    pickled: bytes | None = None


def join_processes(
    context: ProcessContext,
    first_rank: int,
    read_report: Callable[[int], ProcessReport | None],
    *,
    timeout: float | None = None,
) -> None:
    """Wait for every process of ``context`` (``torch.multiprocessing.start_processes(..., join=False)``).

    On the first failure torch's ``ProcessContext.join`` gives the others
    `TERMINATE_GRACE_S` to fail on their own, then stops them; this raises
    [`ProcessFailedError`][lite_strategies.ProcessFailedError] naming the root cause among every rank that failed (see
    `root_cause`). ``read_report(i)`` returns what process ``i`` reported when it raised;
    process ``i`` has global rank ``first_rank + i``. With ``timeout``, processes still running
    after it are stopped and ``TimeoutError`` is raised. Every process has exited on return.
    """
    from torch.multiprocessing.spawn import ProcessException

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            if context.join(timeout=step, grace_period=TERMINATE_GRACE_S):
                return
            if deadline is not None and time.monotonic() >= deadline:
                running = [first_rank + i for i, p in enumerate(context.processes) if p.is_alive()]
                raise TimeoutError(f"ranks {running} did not finish within {timeout:.0f} s")
    except ProcessException as exc:
        error = root_cause(context.processes, first_rank, read_report, exc.error_index)
        raise error from error.__cause__
    finally:
        stop_processes(list(context.processes))


def root_cause(
    processes: list[Any],
    first_rank: int,
    read_report: Callable[[int], ProcessReport | None],
    first_seen: int,
) -> ProcessFailedError:
    """The error naming the process that caused a failure, among ``processes`` that have exited.

    When one process dies, the others fail right after it (a broken connection in their
    collective) or are stopped (SIGTERM), and any of them may be seen first. So the blame goes,
    in order, to a process killed by a signal other than SIGTERM, one that raised an error that
    is not a broken connection, one that exited non-zero without raising, one that raised a
    broken connection; ``first_seen`` (the first failure seen) breaks ties, then the lowest rank.
    """
    failed = []
    for index, process in enumerate(processes):
        code = process.exitcode
        if code is not None and code != 0:
            report = read_report(index)
            failed.append((_blame_order(code, report), index != first_seen, index, code, report))
    if not failed:  # pragma: no cover - ProcessContext only raises for a non-zero exit
        failed.append((0, False, first_seen, processes[first_seen].exitcode, None))
    _, _, index, code, report = min(failed, key=lambda item: item[:3])
    rank = first_rank + index
    others = sorted(first_rank + item[2] for item in failed if item[2] != index)
    after = f" (rank(s) {others} failed after it)" if others else ""
    if report is None:
        return ProcessFailedError(
            f"rank {rank} {describe_exit(code)} before reporting a result (its output is above); "
            f"the other processes were stopped{after}",
            rank=rank,
            exitcode=code,
        )
    error = ProcessFailedError(
        f"rank {rank} raised {report.summary}; the other processes were stopped{after}.\n\n"
        f"Traceback from rank {rank}:\n{report.traceback}",
        rank=rank,
        remote_traceback=report.traceback,
    )
    cause = _unpickle(report.pickled)
    if cause is not None:
        error.__cause__ = cause
    return error


def _blame_order(exitcode: int, report: ProcessReport | None) -> int:
    if report is not None:
        return 3 if is_peer_error(report.summary) else 1
    if exitcode < 0:
        return 4 if -exitcode == signal.SIGTERM else 0
    return 2


def _unpickle(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        exc = pickle.loads(data)
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None
