"""Seed-compatible ``pytorch_lightning.lite.lite``: a re-export of [`LightningLite`][lite_facade.LightningLite]."""

from lite_facade._lite import LightningLite

__all__ = ["LightningLite"]
