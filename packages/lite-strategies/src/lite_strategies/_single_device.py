"""One process, one device."""

from __future__ import annotations

from typing import ClassVar

from lite_strategies._strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Train on one device in the current process: no wrapper, no launcher, identity collectives.

    Its registry row says ``max_devices=1``, which the base class checks at construction.
    """

    strategy_name: ClassVar[str] = "single_device"
