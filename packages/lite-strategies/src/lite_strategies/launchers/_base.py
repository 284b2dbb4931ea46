"""The Launcher protocol and what every launcher shares: rank environment, watchdogs, joining, stopping."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lite_strategies._errors import ProcessFailedError

if TYPE_CHECKING:
    from torch.multiprocessing.spawn import ProcessContext

    from lite_strategies._strategy import Strategy

#: Set in processes a launcher starts: the pid of the launching process, watched by the child.
PARENT_PID_VAR = "LITE_LAUNCHER_PID"
#: How long the other processes get to exit after a SIGTERM before they are killed.
TERMINATE_GRACE_S = 3.0


@runtime_checkable
class Launcher(Protocol):
    """Starts the processes of a strategy and runs a function in each of them."""

    @property
    def is_interactive_compatible(self) -> bool:
        """Whether it works from a notebook / interactive session."""
        ...

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in every process after ``strategy.setup_environment()``.

        Returns the value of the first process of this node (global rank 0 on node 0).
        """
        ...


def rank_environment(
    strategy: Strategy, local_rank: int, main_address: str, main_port: int
) -> dict[str, str]:
    """The standard variables a process of ``strategy`` with ``local_rank`` on this node needs."""
    node_rank = strategy.cluster_environment.node_rank()
    return {
        "MASTER_ADDR": main_address,
        "MASTER_PORT": str(main_port),
        "WORLD_SIZE": str(strategy.world_size),
        "NODE_RANK": str(node_rank),
        "LOCAL_WORLD_SIZE": str(strategy.num_processes),
        "LOCAL_RANK": str(local_rank),
        "RANK": str(node_rank * strategy.num_processes + local_rank),
    }


def run_in_this_process(strategy: Strategy, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """What a launcher does in a process that something else started."""
    start_parent_watchdog()
    strategy.setup_environment()
    return fn(*args, **kwargs)


_watchdog_started = False


def start_parent_watchdog(parent_pid: int | None = None) -> None:
    """Exit this process soon after the launcher that started it dies (e.g. killed with SIGKILL).

    Without it, a child blocked outside a collective would outlive its launcher.
    """
    global _watchdog_started
    if parent_pid is None:
        value = os.environ.get(PARENT_PID_VAR, "")
        parent_pid = int(value) if value.isdigit() else None
    if _watchdog_started or parent_pid is None or os.getppid() != parent_pid:
        return
    _watchdog_started = True
    # The kernel's own guard first: it works even when this process is stuck in C code that holds
    # the GIL (where the thread below could never run), e.g. an OpenMP pool broken by fork.
    _kill_me_when_parent_dies()
    if os.getppid() != parent_pid:  # the parent died before the guard was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        print(
            f"[lite_strategies] the launching process (pid {parent_pid}) is gone; "
            f"stopping process {os.getpid()}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    threading.Thread(target=watch, name="lite-parent-watchdog", daemon=True).start()


def _kill_me_when_parent_dies() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it exits (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl here: the watchdog thread still runs
        pass


def stop_processes(procs: list[Any]) -> None:
    """SIGTERM every live process (``subprocess.Popen`` or ``multiprocessing.Process``), then SIGKILL."""
    alive = [p for p in procs if _is_alive(p)]
    for p in alive:
        try:
            p.terminate()
        except (ProcessLookupError, OSError):
            pass
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for p in alive:
        _wait(p, max(0.0, deadline - time.monotonic()))
    for p in alive:
        if _is_alive(p):
            try:
                p.kill()
            except (ProcessLookupError, OSError):
                pass
            _wait(p, 2.0)


def _is_alive(p: Any) -> bool:
    if isinstance(p, subprocess.Popen):
        return p.poll() is None
    return bool(p.is_alive())


def _wait(p: Any, timeout: float) -> None:
    if isinstance(p, subprocess.Popen):
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    else:
        p.join(timeout)


def describe_exit(exitcode: int | None) -> str:
    """``exited with code 1`` / ``was killed by signal 9 (SIGKILL)``."""
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


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
    :data:`TERMINATE_GRACE_S` to fail on their own, then stops them; this raises
    :class:`ProcessFailedError` naming the root cause among every rank that failed (see
    :func:`root_cause`). ``read_report(i)`` returns what process ``i`` reported when it raised;
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
