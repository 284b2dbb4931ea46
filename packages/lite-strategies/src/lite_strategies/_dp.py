"""torch.nn.DataParallel: one process driving several CUDA devices."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from lite_strategies._strategy import Strategy


class DataParallelStrategy(Strategy):
    """Replicate the module on each CUDA device per forward (``torch.nn.DataParallel``).

    Inputs go to the first device and are scattered by DataParallel; there is one process,
    so there is no launcher and collectives are identity. It refuses CPU devices at
    construction: DataParallel only parallelizes over CUDA devices.
    """

    strategy_name: ClassVar[str] = "dp"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("accelerator", "cuda")
        super().__init__(**kwargs)

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        return nn.DataParallel(module, device_ids=[d.index or 0 for d in self.devices])
