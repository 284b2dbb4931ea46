"""How a model and its optimizers are placed, wrapped and stepped, and how processes are launched.

Strategies (single_device, dp, ddp, ddp_spawn, ddp_fork; deepspeed and its stage presets,
ddp_sharded, ddp_sharded_spawn, fsdp, xla) are rows of [`STRATEGIES`][lite_strategies.STRATEGIES], built lazily; a
third-party strategy is one more row, given to [`register_strategy`][lite_strategies.register_strategy] or published as an
entry point of group ``lite.strategies``;
launchers start the processes; checkpoint IO writes atomically and loads safely.
Importing this package imports no optional backend (deepspeed, fairscale, torch_xla): each is
imported when a strategy that needs it is constructed or sets a module up. The modules of those
strategies are themselves imported on first access (``lite_strategies.FSDPStrategy``), so that
importing this package costs only what ddp needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lite_strategies._checkpoint_io import CheckpointIO, TorchCheckpointIO
from lite_strategies._ddp import DDPForkStrategy, DDPSpawnStrategy, DDPStrategy
from lite_strategies._dp import DataParallelStrategy
from lite_strategies._errors import CheckpointError, ProcessFailedError, StrategyError
from lite_strategies._parallel import ParallelStrategy
from lite_strategies._registry import (
    DEFAULT_STRATEGY,
    ENTRY_POINT_GROUP,
    LAUNCHERS,
    START_METHODS,
    STRATEGIES,
    DefaultRule,
    StrategySpec,
    build_registry,
    default_strategy,
    get_strategy_spec,
    register_strategy,
    strategy_provider,
    strategy_specs,
)
from lite_strategies._single_device import SingleDeviceStrategy
from lite_strategies._state import map_state, state_leaves, unwrap_module
from lite_strategies._strategy import Strategy
from lite_strategies.launchers import Launcher, ScriptLauncher, SpawnLauncher

if TYPE_CHECKING:
    from lite_strategies._sharded import DDPShardedSpawnStrategy, DDPShardedStrategy
    from lite_strategies._xla import XLAStrategy
    from lite_strategies.deepspeed import DeepSpeedStrategy, consolidate_deepspeed_checkpoint
    from lite_strategies.fsdp import FSDPStrategy, consolidate_fsdp_checkpoint

# public name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "DeepSpeedStrategy": "lite_strategies.deepspeed",
    "consolidate_deepspeed_checkpoint": "lite_strategies.deepspeed",
    "FSDPStrategy": "lite_strategies.fsdp",
    "consolidate_fsdp_checkpoint": "lite_strategies.fsdp",
    "DDPShardedStrategy": "lite_strategies._sharded",
    "DDPShardedSpawnStrategy": "lite_strategies._sharded",
    "XLAStrategy": "lite_strategies._xla",
}

__all__ = [
    "DEFAULT_STRATEGY",
    "ENTRY_POINT_GROUP",
    "LAUNCHERS",
    "START_METHODS",
    "STRATEGIES",
    "CheckpointError",
    "CheckpointIO",
    "DDPForkStrategy",
    "DDPShardedSpawnStrategy",
    "DDPShardedStrategy",
    "DDPSpawnStrategy",
    "DDPStrategy",
    "DataParallelStrategy",
    "DefaultRule",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "Launcher",
    "ParallelStrategy",
    "ProcessFailedError",
    "ScriptLauncher",
    "SingleDeviceStrategy",
    "SpawnLauncher",
    "Strategy",
    "StrategyError",
    "StrategySpec",
    "TorchCheckpointIO",
    "XLAStrategy",
    "build_registry",
    "consolidate_deepspeed_checkpoint",
    "consolidate_fsdp_checkpoint",
    "default_strategy",
    "get_strategy_spec",
    "map_state",
    "register_strategy",
    "state_leaves",
    "strategy_provider",
    "strategy_specs",
    "unwrap_module",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses are plain lookups
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
