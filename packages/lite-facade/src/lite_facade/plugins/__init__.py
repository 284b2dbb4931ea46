"""Seed-compatible ``pytorch_lightning.plugins`` names: strategies, precision plugins, checkpoint IO.

``DeepSpeedPlugin`` and the other strategy classes load their backend only when used.
"""

from __future__ import annotations

from typing import Any

from lite_facade.plugins import environments
from lite_precision import DoublePrecisionPlugin, NativeMixedPrecisionPlugin, Precision, PrecisionPlugin
from lite_strategies import CheckpointIO, TorchCheckpointIO

# name -> strategy registry name; the classes are fetched on first access (PEP 562).
_STRATEGY_PLUGINS = {
    "DeepSpeedPlugin": "deepspeed",
    "DeepSpeedStrategy": "deepspeed",
    "DDPPlugin": "ddp",
    "DDPStrategy": "ddp",
    "DDPSpawnPlugin": "ddp_spawn",
    "DDPSpawnStrategy": "ddp_spawn",
    "DataParallelPlugin": "dp",
    "DataParallelStrategy": "dp",
    "SingleDevicePlugin": "single_device",
    "SingleDeviceStrategy": "single_device",
    "DDPShardedPlugin": "ddp_sharded",
    "DDPShardedStrategy": "ddp_sharded",
    "FSDPStrategy": "fsdp",
    "TPUSpawnPlugin": "tpu_spawn",
    "TPUSpawnStrategy": "tpu_spawn",
}

__all__ = [
    "CheckpointIO",
    "DoublePrecisionPlugin",
    "NativeMixedPrecisionPlugin",
    "Precision",
    "PrecisionPlugin",
    "TorchCheckpointIO",
    "environments",
    *_STRATEGY_PLUGINS,
]


def __getattr__(name: str) -> Any:
    if name in _STRATEGY_PLUGINS:
        from lite_strategies import get_strategy_spec

        # The class imports without its backend; using it without the backend raises, naming the extra.
        return get_strategy_spec(_STRATEGY_PLUGINS[name]).load(check_backend=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
