"""The LightningLite 1.8 side of the peer runs (its own module: importing it needs ``lightning_lite``)."""

from __future__ import annotations

from typing import Any

import torch
from _peers import _alternate, _loop, _teardown
from bench_step import make
from lightning_lite import LightningLite


class DDPBench(LightningLite):
    """Times LightningLite 1.8's loop and, in the same processes, a raw DDP loop."""

    def run(self, size: str, n: int, chunks: int) -> dict[str, float]:  # type: ignore[override]
        torch.set_num_threads(1)
        model, opt, x, y = make(size, self.device)
        model, opt = self.setup(model, opt)
        result = _alternate(_loop(model, opt, x, y, self.backward), size, n, chunks)
        _teardown()
        return result


class Idle(LightningLite):
    """``run()`` only sets the strategy up (LightningLite 1.8 does that around ``run``)."""

    def run(self) -> Any:  # type: ignore[override]
        return self
