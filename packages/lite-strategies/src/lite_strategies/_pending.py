"""Strategies whose backends come in a later release: registered, but not built yet."""

from __future__ import annotations

from typing import Any, ClassVar

from lite_strategies._errors import StrategyError
from lite_strategies._strategy import ParallelStrategy


class PendingStrategy(ParallelStrategy):
    """A registered strategy whose backend is not implemented yet: constructing it raises."""

    strategy_name: ClassVar[str] = "ddp"

    def __init__(self, **kwargs: Any) -> None:
        raise StrategyError(
            f"strategy {self.strategy_name!r} is not implemented yet in this release of lite-strategies; "
            f"use 'ddp', 'ddp_spawn' or 'ddp_fork'"
        )
