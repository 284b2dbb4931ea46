"""Precision plugins of strategies whose backend does the precision itself (a row's ``precision_plugin``)."""

from __future__ import annotations

from lite_precision import Precision


def deepspeed_precision(precision: str, device_type: str) -> Precision:
    """DeepSpeed converts the model and scales the loss itself: only inputs and outputs are cast here.

    The engine's dtype follows the precision flag; a user config with its own fp16/bf16
    section is read (and the plugin rebuilt) by the strategy's constructor.
    """
    from lite_strategies._deepspeed import _PRECISION_SECTIONS, _SECTION_DTYPES, DeepSpeedPrecision

    return DeepSpeedPrecision(precision, device_type, _SECTION_DTYPES[_PRECISION_SECTIONS[precision]])
