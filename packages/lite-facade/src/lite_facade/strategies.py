"""Seed-compatible ``pytorch_lightning.strategies``: the strategy classes by their Lightning names.

Each name is fetched on first access, so a backend (DeepSpeed, fairscale, torch_xla) is imported
only when its strategy is used.
"""

from __future__ import annotations

from typing import Any

from lite_strategies import ParallelStrategy, Strategy

# Lightning's class name -> lite's registry name.
_BY_LIGHTNING_NAME = {
    "SingleDeviceStrategy": "single_device",
    "DataParallelStrategy": "dp",
    "DDPStrategy": "ddp",
    "DDPSpawnStrategy": "ddp_spawn",
    "DDPForkStrategy": "ddp_fork",
    "DeepSpeedStrategy": "deepspeed",
    "DDPShardedStrategy": "ddp_sharded",
    "DDPSpawnShardedStrategy": "ddp_sharded_spawn",
    "FSDPStrategy": "fsdp",
    "TPUSpawnStrategy": "tpu_spawn",
    "XLAStrategy": "xla",
}

__all__ = ["ParallelStrategy", "Strategy", *_BY_LIGHTNING_NAME]


def __getattr__(name: str) -> Any:
    if name in _BY_LIGHTNING_NAME:
        from lite_strategies import get_strategy_spec

        # The class imports without its backend; building it without the backend raises, naming the extra.
        return get_strategy_spec(_BY_LIGHTNING_NAME[name]).load(check_backend=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
