"""Start the processes of the 'xla' strategy with torch_xla's own launcher (``xmp.spawn``)."""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from lite_devices import move_to_device
from lite_strategies._errors import ProcessFailedError, StrategyError
from lite_strategies.launchers._base import start_parent_watchdog
from lite_strategies.launchers._spawn import MAIN_GUARD_MESSAGE, START_METHODS

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy


class XLALauncher:
    """Run a function on every XLA device through ``torch_xla``'s ``xmp.spawn``; return rank 0's value.

    With one device (``devices=1``) torch_xla runs the function in this process; with more it
    starts one process per device on this host (all of them: torch_xla takes no other count).
    Each process calls ``strategy.setup_environment()`` before the function. The caller gets
    the value of local rank 0 with its tensors moved to the CPU; an exception in a started
    process comes back as [`ProcessFailedError`][lite_strategies.ProcessFailedError] with that rank's traceback (in this
    process, the exception itself).
    """

    def __init__(self, strategy: Strategy, start_method: str = "spawn") -> None:
        if start_method not in START_METHODS:
            raise StrategyError(
                f"start_method={start_method!r} is not one torch_xla's launcher takes; accepted: "
                f"{', '.join(map(repr, START_METHODS))}"
            )
        self._strategy = strategy
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        """Only 'fork' works from a notebook: 'spawn' must import the function by name."""
        return self.start_method == "fork"

    def launch(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on every XLA device; return local rank 0's value (tensors on the CPU)."""
        import torch_xla.distributed.xla_multiprocessing as xmp

        if getattr(mp.current_process(), "_inheriting", False):
            raise StrategyError(MAIN_GUARD_MESSAGE)
        nprocs = self._strategy.num_processes
        box: list[Any] = []  # filled when torch_xla runs the function in this process
        with tempfile.TemporaryDirectory(prefix="lite-xla-") as tmp:
            result_path = str(Path(tmp) / "rank0.pt")
            try:
                xmp.spawn(
                    _worker,
                    args=(self._strategy, fn, args, kwargs, result_path, box, os.getpid()),
                    # torch_xla accepts 1 (run here) or None (one process per device of this host)
                    nprocs=1 if nprocs == 1 else None,
                    start_method=self.start_method,
                )
            except RuntimeError as exc:
                if "already initialized" not in str(exc):
                    raise
                raise StrategyError(
                    "torch_xla cannot start processes: this process already uses the XLA runtime (an XLA "
                    "tensor or device was touched before launching). Create XLA tensors only inside the "
                    "launched function, or use devices=1"
                ) from exc
            if box:
                return box[0]
            if not os.path.exists(result_path):
                return None
            return torch.load(result_path, map_location="cpu", weights_only=False)


def _worker(
    index: int,
    strategy: Strategy,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    result_path: str,
    box: list[Any],
    parent_pid: int,
) -> None:
    in_child = os.getpid() != parent_pid
    if in_child:
        start_parent_watchdog(parent_pid)
    try:
        strategy.setup_environment()
        value = fn(*args, **kwargs)
    except BaseException as exc:
        if not in_child:
            raise
        # Raised in the pool's process: torch_xla sends it to the launching process, which raises it.
        raise ProcessFailedError(
            f"rank {index} raised {type(exc).__name__}: {exc}; the launch was stopped.\n\n"
            f"Traceback from rank {index}:\n{traceback.format_exc()}",
            rank=index,
            remote_traceback=traceback.format_exc(),
        ) from None
    if strategy.local_rank == 0:
        value = move_to_device(value, torch.device("cpu"))
        if in_child:
            torch.save(value, result_path)
        else:
            box.append(value)
    strategy.barrier("lite_xla_launcher_end")  # every replica finishes before any process exits
    strategy.teardown()
