"""Seed-compatible ``pytorch_lightning.strategies``: the strategy classes by their Lightning names.

Each name is fetched on first access, so a backend (DeepSpeed, fairscale, torch_xla) is imported
only when its strategy is used.
"""

from __future__ import annotations

from typing import Any

import lite_strategies
from lite_strategies import ParallelStrategy, Strategy

# Lightning's class name -> lite_strategies' class name.
_BY_LIGHTNING_NAME = {
    "SingleDeviceStrategy": "SingleDeviceStrategy",
    "DataParallelStrategy": "DataParallelStrategy",
    "DDPStrategy": "DDPStrategy",
    "DDPSpawnStrategy": "DDPSpawnStrategy",
    "DDPForkStrategy": "DDPForkStrategy",
    "DeepSpeedStrategy": "DeepSpeedStrategy",
    "DDPShardedStrategy": "DDPShardedStrategy",
    "DDPSpawnShardedStrategy": "DDPShardedSpawnStrategy",
    "FSDPStrategy": "FSDPStrategy",
    "TPUSpawnStrategy": "XLAStrategy",
    "XLAStrategy": "XLAStrategy",
}

__all__ = ["ParallelStrategy", "Strategy", *_BY_LIGHTNING_NAME]


def __getattr__(name: str) -> Any:
    if name in _BY_LIGHTNING_NAME:
        # The class imports without its backend; building it without the backend raises, naming the extra.
        return getattr(lite_strategies, _BY_LIGHTNING_NAME[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
