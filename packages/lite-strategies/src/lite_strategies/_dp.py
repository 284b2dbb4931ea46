"""torch.nn.DataParallel: one process driving several CUDA devices."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from lite_devices import get_accelerator
from lite_strategies._errors import StrategyError
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
        devices = kwargs.get("devices") or ()
        asked = [str(kwargs["accelerator"])] + [str(d) for d in devices]
        if any(torch.device(d).type != "cuda" for d in devices) or get_accelerator(asked[0]).name != "cuda":
            raise StrategyError(
                f"strategy 'dp' (torch.nn.DataParallel) needs CUDA devices, got accelerator={asked[0]!r}, "
                f"devices={asked[1:] or None}; on CPU use strategy='ddp', 'ddp_spawn' or 'ddp_fork'"
            )
        super().__init__(**kwargs)

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        return nn.DataParallel(module, device_ids=[d.index or 0 for d in self.devices])
