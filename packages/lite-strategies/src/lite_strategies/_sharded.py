"""The 'ddp_sharded' strategy (backend in a later release)."""

from __future__ import annotations

from typing import ClassVar

from lite_strategies._pending import PendingStrategy


class DDPShardedStrategy(PendingStrategy):
    """Placeholder: raises StrategyError ("not implemented yet in this release") when built."""

    strategy_name: ClassVar[str] = "ddp_sharded"


class DDPShardedSpawnStrategy(PendingStrategy):
    """Placeholder: raises StrategyError ("not implemented yet in this release") when built."""

    strategy_name: ClassVar[str] = "ddp_sharded_spawn"
