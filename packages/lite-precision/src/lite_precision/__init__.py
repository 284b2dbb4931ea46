"""Precision modes for PyTorch training: 64, 32, 16-mixed, bf16-mixed, 16-true, bf16-true.

Each mode is a small object built from its name by [`get_precision`][lite_precision.get_precision]; it converts a
module and its inputs/outputs, gives the context forward runs in, and owns the backward
and optimizer step (loss scaling for ``"16-mixed"``).
"""

from lite_precision._base import Precision
from lite_precision._errors import PrecisionError
from lite_precision._modes import (
    BFloat16MixedPrecision,
    BFloat16Precision,
    DoublePrecision,
    HalfMixedPrecision,
    HalfPrecision,
    MixedPrecision,
)
from lite_precision._plugins import DoublePrecisionPlugin, NativeMixedPrecisionPlugin, PrecisionPlugin
from lite_precision._registry import PRECISIONS, canonical_precision, get_precision

__all__ = [
    "PRECISIONS",
    "BFloat16MixedPrecision",
    "BFloat16Precision",
    "DoublePrecision",
    "DoublePrecisionPlugin",
    "HalfMixedPrecision",
    "HalfPrecision",
    "MixedPrecision",
    "NativeMixedPrecisionPlugin",
    "Precision",
    "PrecisionError",
    "PrecisionPlugin",
    "canonical_precision",
    "get_precision",
]
