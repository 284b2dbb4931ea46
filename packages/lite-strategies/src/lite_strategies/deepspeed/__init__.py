"""The 'deepspeed' strategies (ZeRO stages 0-3) and the tool that consolidates their checkpoints.

``deepspeed`` itself is imported only when a strategy is built or sets a model up.
"""

from __future__ import annotations

from lite_strategies.deepspeed._checkpoint import consolidate_deepspeed_checkpoint
from lite_strategies.deepspeed._config import DeepSpeedOptions
from lite_strategies.deepspeed._strategy import (
    DeepSpeedStage1Strategy,
    DeepSpeedStage2OffloadStrategy,
    DeepSpeedStage2Strategy,
    DeepSpeedStage3OffloadStrategy,
    DeepSpeedStage3Strategy,
    DeepSpeedStrategy,
)

__all__ = [
    "DeepSpeedOptions",
    "DeepSpeedStage1Strategy",
    "DeepSpeedStage2OffloadStrategy",
    "DeepSpeedStage2Strategy",
    "DeepSpeedStage3OffloadStrategy",
    "DeepSpeedStage3Strategy",
    "DeepSpeedStrategy",
    "consolidate_deepspeed_checkpoint",
]
