"""Strategies whose backends come in a later release: registered, but not built yet."""

from __future__ import annotations

from typing import Any, ClassVar

from lite_strategies._errors import StrategyError
from lite_strategies._strategy import ParallelStrategy


class PendingStrategy(ParallelStrategy):
    """A registered strategy whose backend is not implemented yet: constructing it raises."""

    strategy_name: ClassVar[str] = "ddp"

    def __init__(self, **kwargs: Any) -> None:
        from lite_strategies._registry import get_strategy_spec

        get_strategy_spec(self.strategy_name).load()  # a missing backend: the error names the pip extra
        raise StrategyError(
            f"strategy {self.strategy_name!r} is not implemented yet in this release of lite-strategies; "
            f"use 'ddp', 'ddp_spawn' or 'ddp_fork'"
        )
