"""Seed-compatible ``pytorch_lightning.plugins`` names: strategies, precision plugins, checkpoint IO.

``DeepSpeedPlugin`` and the other strategy classes load their backend only when used.
"""

from __future__ import annotations

from typing import Any

from lite_facade.plugins import environments
from lite_precision import DoublePrecisionPlugin, NativeMixedPrecisionPlugin, Precision, PrecisionPlugin
from lite_strategies import CheckpointIO, TorchCheckpointIO

# seed name -> the lite_strategies class it is, fetched on first access (PEP 562).
_STRATEGY_PLUGINS = {
    "DeepSpeedPlugin": "DeepSpeedStrategy",
    "DeepSpeedStrategy": "DeepSpeedStrategy",
    "DDPPlugin": "DDPStrategy",
    "DDPStrategy": "DDPStrategy",
    "DDPSpawnPlugin": "DDPSpawnStrategy",
    "DDPSpawnStrategy": "DDPSpawnStrategy",
    "DataParallelPlugin": "DataParallelStrategy",
    "DataParallelStrategy": "DataParallelStrategy",
    "SingleDevicePlugin": "SingleDeviceStrategy",
    "SingleDeviceStrategy": "SingleDeviceStrategy",
    "DDPShardedPlugin": "DDPShardedStrategy",
    "DDPShardedStrategy": "DDPShardedStrategy",
    "FSDPStrategy": "FSDPStrategy",
    "TPUSpawnPlugin": "XLAStrategy",
    "TPUSpawnStrategy": "XLAStrategy",
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
        import lite_strategies

        # The class imports without its backend; using it without the backend raises, naming the extra.
        return getattr(lite_strategies, _STRATEGY_PLUGINS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
