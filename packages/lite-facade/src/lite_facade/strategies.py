"""The strategies ``LightningLite`` knows, from lite-strategies (backends load only when used)."""

from lite_strategies import STRATEGIES, Strategy, StrategySpec, get_strategy_spec

__all__ = ["STRATEGIES", "Strategy", "StrategySpec", "get_strategy_spec"]
