"""Seed-compatible ``pytorch_lightning.lite``: ``LightningLite`` (also as ``lite_facade.lite.lite``) and ``wrappers``."""

from lite_facade.lite.lite import LightningLite

__all__ = ["LightningLite"]
