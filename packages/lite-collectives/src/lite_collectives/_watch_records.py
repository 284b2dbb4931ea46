"""What the watchdog records of each rank: its position (op, shapes, call site), its peers, and the settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from lite_collectives._errors import (
    CollectiveTimeoutError,
)
from lite_collectives._wire import dtype_code, dtype_name

THRESHOLD_ENV = "LITE_COLLECTIVES_WATCHDOG_S"
IDLE_REPORT_ENV = "LITE_COLLECTIVES_IDLE_REPORT_S"
DEFAULT_THRESHOLD_S = 2.0
DEFAULT_IDLE_REPORT_S = 60.0
#: How often a waiting collective looks up from the backend, and the thread polls while waiting.
POLL_S = 0.25
#: How often an idle rank's thread checks whether a waiting rank asked where it is.
IDLE_POLL_S = 1.0
TIMEOUT_HINT = (
    "If the wait is legitimate (a slow step on one rank), raise the timeout: LightningLite(timeout=3600) "
    "or `timeout=` on the strategy, e.g. DDPStrategy(timeout=3600) (seconds or a timedelta; default 30 "
    "minutes), or init_process_group(timeout=...) when you start the group yourself."
)

_POLL = timedelta(seconds=POLL_S)
_SKIP_DIRS = (
    *(
        f"{os.sep}{name}{os.sep}"
        for name in ("lite_collectives", "lite_strategies", "lite_facade", "lite_precision", "lite_data")
    ),
    f"{os.sep}torch{os.sep}",
)


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise CollectiveTimeoutError(f"{name} must be a number of seconds, got {value!r}.") from None


@dataclass(slots=True)
class Position:
    """Where one rank is: its n-th collective, which op, with what, called from where."""

    seq: int
    op: str
    site: tuple[str, int]
    #: The tensors, only while the collective runs; their description is made only when needed.
    tensors: Sequence[torch.Tensor] = ()
    meta: tuple[tuple[int, int, tuple[int, ...]], ...] | None = None  # (dtype code, ndim, shape) each

    def settled(self) -> Position:
        """A copy without the tensors, their shapes and dtypes written out (to publish)."""
        tensors = self.tensors
        if self.meta is None and tensors:
            self.meta = position_meta(list(tensors))
        return Position(self.seq, self.op, self.site, (), self.meta if self.meta is not None else ())

    def describe(self) -> str:
        meta = self.meta if self.meta is not None else self.settled().meta or ()
        tensors = ", ".join(f"{dtype_name(code)}{list(shape)}" for code, _, shape in meta)
        return f"#{self.seq} {self.op}([{tensors}]) at {self.site[0]}:{self.site[1]}"


@dataclass
class Peer:
    """What a rank published to the store."""

    rank: int
    state: str  # "started", "waiting", "diverged", "idle", "exited", "left"
    position: Position | None
    waited: float
    pid: int
    host: str
    beat: int
    answered: int

    def describe(self) -> str:
        where = self.position.describe() if self.position else "no collective yet"
        if self.state in ("waiting", "diverged"):
            return f"waits in {where} for {self.waited:.1f} s"
        if self.state in ("exited", "left"):
            return f"has {'exited' if self.state == 'exited' else 'left the process group'} (last collective: {where})"
        return f"is in no collective (last: {where})"


_skipped: dict[Any, bool] = {}  # code object -> whether it belongs to a lite package or torch


def _is_skipped(code: Any) -> bool:
    found = _skipped.get(code)
    if found is None:
        found = _skipped[code] = any(d in code.co_filename for d in _SKIP_DIRS)
    return found


def call_site() -> tuple[str, int]:
    """(file, line) of the first caller outside the lite packages and torch."""
    frame: Any = sys._getframe(2)
    while frame is not None and _is_skipped(frame.f_code):
        frame = frame.f_back
    if frame is None:
        return ("?", 0)
    return (frame.f_code.co_filename, frame.f_lineno)


def position_meta(tensors: list[torch.Tensor]) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    return tuple((dtype_code(t.dtype), t.dim(), tuple(t.shape)) for t in tensors)
