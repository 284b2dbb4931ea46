"""Seed-compatible ``pytorch_lightning.lite.wrappers``: the objects ``setup`` and ``setup_dataloaders`` return."""

from lite_data import DeviceDataLoader as _LiteDataLoader
from lite_facade._wrappers import _LiteModule, _LiteOptimizer

__all__ = ["_LiteDataLoader", "_LiteModule", "_LiteOptimizer"]
