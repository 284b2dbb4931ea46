"""Re-run the user's script (or ``python -m`` module) once per extra local process."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lite_strategies._errors import ProcessFailedError, StrategyError
from lite_strategies.launchers._base import (
    PARENT_PID_VAR,
    describe_exit,
    rank_environment,
    run_in_this_process,
    stop_processes,
)
from lite_strategies.launchers._join import is_peer_error

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

#: After a child fails, how long the main process gets to raise on its own (a collective
#: usually fails at once when a peer dies) before it is stopped from outside.
FAILURE_GRACE_S = 5.0


def script_command() -> list[str]:
    """The command line that started this interpreter: ``python script.py ...`` or ``python -m pkg ...``."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name.removesuffix(".__main__")
        return [sys.executable, *interpreter_options(["-m", name]), "-m", name, *sys.argv[1:]]
    main_file = getattr(__main__, "__file__", None)
    if not main_file or not sys.argv or sys.argv[0] in ("", "-c", "-"):
        raise StrategyError(
            "the script launcher (strategy='ddp') starts the other processes by running your script "
            "again, but this session has no script (interactive, notebook or `python -c`). Use "
            "strategy='ddp_notebook' (fork) or 'ddp_spawn', or put the code in a file and run it"
        )
    return [sys.executable, *interpreter_options([sys.argv[0]]), os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def interpreter_options(target: list[str]) -> list[str]:
    """The options given to the interpreter itself (``-X importtime``, ``-W error``, ``-O``...), which
    the ranks started again must get too; ``target`` is how the script or module was named.

    Read from ``sys.orig_argv``; ``[]`` when it does not end in ``target`` and this process's
    arguments (then it is not a plain ``python [options] target args`` command line). ``-i`` is
    left out: a rank must not stop at a prompt.
    """
    orig = list(getattr(sys, "orig_argv", []))
    tail = [*target, *sys.argv[1:]]
    if len(orig) < 1 + len(tail) or orig[len(orig) - len(tail) :] != tail:
        return []
    return [option for option in orig[1 : len(orig) - len(tail)] if option != "-i"]


class ScriptLauncher:
    """Start local ranks 1..N-1 by re-running the command that started this process; run rank 0 here.

    Each child gets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and NODE_RANK and runs
    the same script, whose ``launch`` then sees an externally created process and just runs
    the function. When the cluster environment creates the processes (torchrun, SLURM's
    srun, MPI) nothing is started. If a child fails, the others are stopped and this process
    raises [`ProcessFailedError`][lite_strategies.ProcessFailedError] naming the rank (or exits non-zero within a few seconds
    when it cannot raise, e.g. while blocked outside Python). SIGINT (Ctrl-C) stops the whole
    run within seconds, even while this process is blocked in a collective, where Python cannot
    run its handler: a thread woken by the signal stops the children, which ends the collective.
    """

    is_interactive_compatible = False

    def __init__(self, strategy: Strategy) -> None:
        self._strategy = strategy
        self._watcher: _ChildWatcher | None = None

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start the children (once), then run ``fn`` as local rank 0 and return its value."""
        strategy = self._strategy
        env = strategy.cluster_environment
        if env.creates_processes_externally or self._watcher is not None:
            return run_in_this_process(strategy, fn, args, kwargs)
        command = script_command() if strategy.num_processes > 1 else []
        variables = rank_environment(strategy, 0, env.main_address, env.main_port)
        os.environ.update(variables)
        children: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for local_rank in range(1, strategy.num_processes):
                child_env = {
                    **os.environ,
                    **rank_environment(strategy, local_rank, env.main_address, env.main_port),
                    PARENT_PID_VAR: str(os.getpid()),
                }
                global_rank = int(child_env["RANK"])
                children[global_rank] = subprocess.Popen(command, env=child_env)
        except BaseException:
            stop_processes(list(children.values()))
            raise
        self._watcher = watcher = _ChildWatcher(children)
        watcher.start()
        if children:
            _InterruptStopper(watcher).install()
        try:
            strategy.setup_environment()
            return fn(*args, **kwargs)
        except BaseException as exc:
            watcher.handled = True
            if watcher.interrupted:
                stop_processes(list(children.values()))
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise KeyboardInterrupt from exc
            # A collective fails at once when a peer dies, often before the peer has finished
            # exiting: give the watcher longer to see which rank it was in that case.
            failure = watcher.wait_for_failure(FAILURE_GRACE_S if _peer_error(exc) else 1.0)
            stop_processes(list(children.values()))
            if failure is not None and not isinstance(exc, KeyboardInterrupt):
                raise failure from exc
            raise


def _peer_error(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and is_peer_error(f"{type(exc).__name__}: {exc}")


class _ChildWatcher:
    """Watch the children for the life of the main process; on a failure, stop everything."""

    def __init__(self, children: dict[int, subprocess.Popen[bytes]]) -> None:
        self.children = children
        self.handled = False  # the main thread is raising on its own
        self.interrupted = False  # SIGINT: the children are stopped on purpose, not failing
        self.failure: ProcessFailedError | None = None
        self._failed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="lite-child-watcher", daemon=True).start()
        atexit.register(self._wait_at_exit)

    def _run(self) -> None:
        while not self._failed.is_set():
            for rank, proc in self.children.items():
                code = proc.poll()
                if code is not None and code != 0 and not self.interrupted:
                    self._fail(rank, code)
                    break
            if all(p.poll() is not None for p in self.children.values()):
                return
            time.sleep(0.2)

    def _fail(self, rank: int, code: int) -> None:
        self.failure = ProcessFailedError(
            f"rank {rank} {describe_exit(code)} (its output is above); the other processes were stopped",
            rank=rank,
            exitcode=code,
        )
        self._failed.set()
        stop_processes(list(self.children.values()))
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline:
            if self.handled:
                return
            time.sleep(0.1)
        print(f"[lite_strategies] {self.failure}; stopping rank 0", file=sys.stderr, flush=True)
        os._exit(1)

    def wait_for_failure(self, timeout: float) -> ProcessFailedError | None:
        self._failed.wait(timeout)
        return self.failure

    def _wait_at_exit(self) -> None:
        # The children run the same script to its end; wait for them (a failure ends them
        # all through the watcher) so the job's exit status covers every rank.
        try:
            while any(p.poll() is None for p in self.children.values()):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.handled = True
            stop_processes(list(self.children.values()))
            raise
        if self.failure is not None and not self.handled:
            self.handled = True
            print(f"[lite_strategies] {self.failure}", file=sys.stderr, flush=True)
            os._exit(1)


class _InterruptStopper:
    """On SIGINT, stop the children when the main thread cannot: it may be blocked in C++ (a collective).

    Python runs its SIGINT handler only when the main thread is back in the interpreter; a
    collective waiting for a peer never returns there. ``signal.set_wakeup_fd`` makes the
    C-level handler write the signal number to a pipe, which wakes a thread here. If the main
    thread has not started handling the ``KeyboardInterrupt`` within a moment, the thread stops
    the children, which fails the collective (its peers are gone), so that the main thread runs
    Python again and raises. If it is still stuck at the same place after `FAILURE_GRACE_S`,
    the process exits.
    Only the default SIGINT handler is served this way, and only when no one else uses the wakeup fd.
    """

    def __init__(self, watcher: _ChildWatcher) -> None:
        self._watcher = watcher

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return  # ignored (a background job) or the user's own handler: leave it alone
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            previous = None
        if previous != -1:  # another user of the wakeup fd (e.g. asyncio) keeps it
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return
        threading.Thread(target=self._run, args=(read_fd,), name="lite-interrupt", daemon=True).start()

    def _run(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._stop()

    def _stop(self) -> None:
        watcher = self._watcher
        watcher.interrupted = True
        if _wait_until(lambda: watcher.handled, 1.0):
            return  # the main thread is in Python and handles the KeyboardInterrupt itself
        print("[lite_strategies] interrupted: stopping the other processes", file=sys.stderr, flush=True)
        stop_processes(list(watcher.children.values()))
        before = _main_thread_position()
        if _wait_until(lambda: watcher.handled, FAILURE_GRACE_S) or _main_thread_position() != before:
            return  # raising, or running Python (e.g. the user's own KeyboardInterrupt handling)
        print("[lite_strategies] interrupted: rank 0 does not respond; exiting", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGINT)


def _main_thread_position() -> tuple[int, int] | None:
    """Where the main thread is (its innermost frame and instruction): unchanged while it is blocked in C."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    return None if frame is None else (id(frame), frame.f_lasti)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
