"""Seed-compatible ``pytorch_lightning.lite``: re-exports ``LightningLite`` (also as ``lite_facade.lite.lite``) and ``wrappers``."""

from lite_facade._lite import LightningLite

__all__ = ["LightningLite"]
