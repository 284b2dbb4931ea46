"""The 'fsdp' strategy (backend in a later release)."""

from __future__ import annotations

from typing import ClassVar

from lite_strategies._pending import PendingStrategy


class FSDPStrategy(PendingStrategy):
    """Placeholder: raises StrategyError ("not implemented yet in this release") when built."""

    strategy_name: ClassVar[str] = "fsdp"
