"""Rank-zero helpers: run, warn or log on the process with global rank 0 only.

The rank is the one ``LightningLite`` runs as (set when ``run()`` starts in each process); before
that, or outside ``LightningLite``, it is read from the launcher's environment variables (``RANK``,
then ``SLURM_PROCID``, ``OMPI_COMM_WORLD_RANK``, ``PMI_RANK``), and 0 when none is set.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["get_rank", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "set_rank"]

_F = TypeVar("_F", bound=Callable[..., Any])
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_rank: int | None = None

log = logging.getLogger("lite")


def get_rank() -> int:
    """The global rank the rank-zero helpers use: the one set by `set_rank`, else the environment's."""
    if _rank is not None:
        return _rank
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def set_rank(rank: int | None) -> None:
    """Set the global rank of this process (``LightningLite`` does at the start of ``run``); None: read it again."""
    global _rank
    _rank = rank


def rank_zero_only(fn: _F) -> _F:
    """Decorate ``fn`` so that it runs on global rank 0 only; elsewhere the call does nothing and returns None.

    Examples:
        >>> @rank_zero_only
        ... def report(loss):
        ...     return f"loss {loss:.2f}"
        >>> report(0.25)  # a single process is rank 0
        'loss 0.25'
    """

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> Any:
        if get_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return cast(_F, on_rank_zero)


def rank_zero_warn(
    message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 1
) -> None:
    """``warnings.warn`` on global rank 0 only; ``stacklevel`` counts as if the caller had called ``warnings.warn``."""
    if get_rank() == 0:
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def rank_zero_info(message: str, *args: Any) -> None:
    """Log ``message`` at INFO on the ``"lite"`` logger, on global rank 0 only.

    Unless the application configured that logger (or the root logger) itself, the first call
    gives it a handler that prints to standard error at INFO.
    """
    if get_rank() != 0:
        return
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    log.info(message, *args)
