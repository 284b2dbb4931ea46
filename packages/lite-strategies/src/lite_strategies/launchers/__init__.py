"""Launchers: what starts the processes of a strategy and runs the user's function in each.

One launcher per kind, chosen by `make_launcher` from the kind a strategy declares:

- ``"script"``: [`ScriptLauncher`][lite_strategies.ScriptLauncher] re-runs the user's script (or ``python -m`` module)
  once per extra local process; rank 0 stays in the user's process.
- ``"spawn"`` / ``"fork"``: [`SpawnLauncher`][lite_strategies.SpawnLauncher] starts one process per device with
  ``torch.multiprocessing.start_processes`` and returns rank 0's value.
- ``"xla"``: `XLALauncher` hands the processes to torch_xla's ``xmp.spawn``.

Every started process watches its launcher and exits soon after the launcher dies; a failed
process is reported as [`ProcessFailedError`][lite_strategies.ProcessFailedError] naming its rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lite_strategies._errors import StrategyError
from lite_strategies.launchers._base import Launcher
from lite_strategies.launchers._script import ScriptLauncher
from lite_strategies.launchers._spawn import START_METHODS, SpawnLauncher
from lite_strategies.launchers._xla import XLALauncher

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

#: Every launcher kind a strategy can declare.
LAUNCHER_KINDS = ("script", *START_METHODS, "xla")

__all__ = [
    "LAUNCHER_KINDS",
    "Launcher",
    "ScriptLauncher",
    "SpawnLauncher",
    "XLALauncher",
    "make_launcher",
]


def make_launcher(kind: str, strategy: Strategy, *, start_method: str = "spawn") -> Launcher:
    """The launcher of ``kind`` (one of `LAUNCHER_KINDS`) for ``strategy``.

    ``start_method`` is only read for ``"xla"``: how torch_xla starts its processes.
    """
    if kind == "script":
        return ScriptLauncher(strategy)
    if kind in START_METHODS:
        return SpawnLauncher(strategy, start_method=kind)
    if kind == "xla":
        return XLALauncher(strategy, start_method=start_method)
    raise StrategyError(f"launcher kind {kind!r} is not one of {list(LAUNCHER_KINDS)}")
