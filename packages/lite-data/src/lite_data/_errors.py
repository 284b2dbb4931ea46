"""The errors lite_data raises."""

from __future__ import annotations


class DataLoaderError(ValueError):
    """A DataLoader cannot be put under distributed sampling, or a saved state does not fit it."""


class SeedError(ValueError):
    """A seed that is not an integer in ``[0, 2**32 - 1]``."""


class UnsizedSamplerError(DataLoaderError, TypeError):
    """A sampler without ``__len__`` where one is needed to split it across ranks.

    Both a [`DataLoaderError`][lite_data.DataLoaderError] and a ``TypeError`` (what LightningLite raises there).
    """
