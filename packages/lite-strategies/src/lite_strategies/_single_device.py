"""One process, one device."""

from __future__ import annotations

from typing import Any, ClassVar

from lite_strategies._errors import StrategyError
from lite_strategies._strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Train on one device in the current process: no wrapper, no launcher, identity collectives."""

    strategy_name: ClassVar[str] = "single_device"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(self.devices) != 1:
            raise StrategyError(
                f"strategy 'single_device' takes exactly one device, got {len(self.devices)}: "
                f"{[str(d) for d in self.devices]}; use strategy='ddp' for several"
            )
