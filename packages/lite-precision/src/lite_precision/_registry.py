"""One table from every accepted spelling of ``precision`` to a canonical mode, and the factory."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from types import MappingProxyType

from lite_precision._base import Precision
from lite_precision._errors import PrecisionError
from lite_precision._modes import (
    BFloat16MixedPrecision,
    BFloat16Precision,
    DoublePrecision,
    HalfMixedPrecision,
    HalfPrecision,
)

PRECISIONS: Mapping[str, type[Precision]] = MappingProxyType(
    {
        "64-true": DoublePrecision,
        "32-true": Precision,
        "16-mixed": HalfMixedPrecision,
        "bf16-mixed": BFloat16MixedPrecision,
        "16-true": HalfPrecision,
        "bf16-true": BFloat16Precision,
    }
)
"""Canonical name -> mode class; each class is built as ``cls(device_type=...)``."""

# LightningLite 1.8 spellings (ints, their strings, "bf16") -> canonical names.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
)

# Known to Lightning, deliberately absent here: say so instead of "unknown".
_NOT_SUPPORTED = {
    "transformer-engine": "NVIDIA Transformer Engine is not integrated in lite",
    "transformer-engine-float16": "NVIDIA Transformer Engine is not integrated in lite",
}


def _accepted() -> str:
    return ", ".join([*PRECISIONS, "64", "32", "16", "'bf16'"])


def canonical_precision(value: str | int) -> str:
    """The canonical name of a precision spelling.

    Accepts the canonical names (``"64-true"``, ``"32-true"``, ``"16-mixed"``,
    ``"bf16-mixed"``, ``"16-true"``, ``"bf16-true"``, case-insensitive) and LightningLite's
    ``64``, ``32``, ``16``, ``"bf16"`` (as ints or strings; NumPy integers too). Bools and
    floats are rejected: ``16.0`` or ``True`` is more likely a bug than a choice.

    Examples:
        >>> canonical_precision(16)
        '16-mixed'
        >>> canonical_precision("bf16")
        'bf16-mixed'

    Raises:
        PrecisionError: the value is not one of the above.
    """
    if isinstance(value, (bool, float)):
        raise PrecisionError(
            f"precision={value!r} ({type(value).__name__}) is not accepted; pass an int or a string: {_accepted()}"
        )
    if not isinstance(value, str):
        try:
            value = str(operator.index(value))
        except TypeError:
            raise PrecisionError(
                f"precision={value!r} ({type(value).__name__}) is not accepted; expected one of {_accepted()}"
            ) from None
    key = value.strip().lower()
    if key in PRECISIONS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    if key in _NOT_SUPPORTED:
        raise PrecisionError(
            f"precision={value!r} is not supported: {_NOT_SUPPORTED[key]}; expected one of {_accepted()}"
        )
    raise PrecisionError(f"precision={value!r} is not a precision lite knows; expected one of {_accepted()}")


def get_precision(precision: str | int = "32-true", device_type: str = "cpu") -> Precision:
    """Build the mode for ``precision`` on ``device_type``.

    Examples:
        >>> get_precision("bf16", "cpu")
        BFloat16MixedPrecision(name='bf16-mixed', device_type='cpu')

    Raises:
        PrecisionError: an unknown precision or device type, or a mode the device type cannot run
            (e.g. bf16 on a CUDA GPU older than Ampere, 64-true on MPS) - at construction, not at
            the first step.
    """
    return PRECISIONS[canonical_precision(precision)](device_type=device_type)
