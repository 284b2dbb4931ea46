"""The names the string flags take, as ``Literal`` types for type checkers.

At run time any string still reaches the resolver (which accepts names that later releases add
and says what it accepts); a type checker (``mypy --strict``, pyright) flags a misspelt flag, e.g.
``precision="bf16-mixd"``, before the script runs.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["AcceleratorName", "PrecisionName", "StrategyName"]

AcceleratorName = Literal["cpu", "gpu", "cuda", "mps", "tpu", "xla", "auto"]
"""The ``accelerator=`` names."""

StrategyName = Literal[
    "auto",
    "single_device",
    "single",
    "dp",
    "data_parallel",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "ddp_sharded",
    "ddp_sharded_spawn",
    "fsdp",
    "xla",
    "tpu_spawn",
    "xla_spawn",
]
"""The ``strategy=`` names (a strategy object is accepted too)."""

PrecisionName = (
    Literal[64, 32, 16]
    | Literal["64", "32", "16", "bf16"]
    | Literal["64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]
)
"""The ``precision=`` values: LightningLite's ``64``/``32``/``16``/``"bf16"`` and the current names."""
