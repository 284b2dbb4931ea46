"""A strategy from outside the lite packages: one module and one row, published as an entry point.

``CountingSingleDeviceStrategy`` runs like ``single_device`` and counts the optimizer steps it
takes, so a test can tell that LightningLite really trained through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lite_strategies import SingleDeviceStrategy, StrategySpec

__all__ = ["ROW", "CountingSingleDeviceStrategy"]


class CountingSingleDeviceStrategy(SingleDeviceStrategy):
    """``single_device`` that counts its optimizer steps in :attr:`steps`."""

    strategy_name: ClassVar[str] = "counting_single_device"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = 0

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        self.steps += 1
        return super().optimizer_step(optimizer, **kwargs)


ROW = StrategySpec(
    name="counting_single_device",
    aliases=("counting",),
    factory="lite_third_party_strategy:CountingSingleDeviceStrategy",
    accelerators=("cpu", "cuda"),
    launcher=None,
    multi_process=False,
    interactive=True,
    precisions=("32-true", "bf16-mixed"),
    max_devices=1,
    description="single_device, counting its optimizer steps (a test of third-party registration).",
)
