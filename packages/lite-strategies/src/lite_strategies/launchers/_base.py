"""The Launcher protocol and what every launcher shares: rank environment, watchdogs, stopping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
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
