"""The one exception this package raises for bad input."""

from __future__ import annotations


class PrecisionError(ValueError):
    """A precision name that does not exist, or a mode that the device cannot run."""
