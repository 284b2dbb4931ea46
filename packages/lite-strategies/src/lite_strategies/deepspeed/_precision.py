"""What the facade's module wrapper does around a DeepSpeed engine's forward: casts only."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from lite_precision import Precision


class DeepSpeedPrecision(Precision):
    """What the facade's module wrapper does around a DeepSpeed engine's forward.

    DeepSpeed converts the model itself (bf16/fp16 parameters with fp32 master weights in its
    optimizer) and runs no autocast, so the forward only casts floating inputs to the
    engine's dtype and floating outputs back to the default dtype (float32), so that a loss
    computed outside the model is float32. Backward and step go through the engine, never here.
    """

    has_forward_context = False
    uses_scaler = False

    def __init__(self, name: str, device_type: str, dtype: torch.dtype) -> None:
        # No device check: the strategy checked what DeepSpeed can run at construction.
        self.name = name
        self.device_type = device_type
        self.dtype = dtype
        self.converts_inputs = self.converts_outputs = dtype is not torch.float32

    def convert_input(self, data: Any) -> Any:
        return _cast_floating(data, self.dtype) if self.converts_inputs else data

    def convert_output(self, data: Any) -> Any:
        return _cast_floating(data, torch.get_default_dtype()) if self.converts_outputs else data


def _cast_floating(data: Any, dtype: torch.dtype) -> Any:
    return tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, data)


def deepspeed_precision(precision: str, device_type: str) -> Precision:
    """The deepspeed rows' precision plugin: DeepSpeed converts the model and scales the loss itself,
    so only inputs and outputs are cast here.

    The engine's dtype follows the precision flag; a user config with its own fp16/bf16
    section is read (and the plugin rebuilt) by the strategy's constructor.
    """
    from lite_strategies.deepspeed._config import _PRECISION_SECTIONS, _SECTION_DTYPES

    return DeepSpeedPrecision(precision, device_type, _SECTION_DTYPES[_PRECISION_SECTIONS[precision]])
