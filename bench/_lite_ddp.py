"""The LightningLite side of bench_step.py's two-process runs (module level so 'spawn' can pickle it)."""

from __future__ import annotations

import statistics

import torch
from bench_step import chunked, make, raw_steps
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lite_facade import LightningLite


class DDPBench(LightningLite):
    """Times lite's loop and, in the same processes and in alternation, a raw DDP loop."""

    def run(self, size: str, n: int, chunks: int) -> dict[str, float]:
        torch.set_num_threads(1)  # as in the torch pair
        model, opt, x, y = make(size, self.device)
        model, opt = self.setup(model, opt)

        def lite_steps(k: int) -> None:
            for _ in range(k):
                opt.zero_grad()
                self.backward(nn.functional.mse_loss(model(x), y))
                opt.step()

        raw_model, raw_opt, rx, ry = make(size, self.device)
        raw = raw_steps(DistributedDataParallel(raw_model), raw_opt, rx, ry, "32-true")
        lite_times, raw_times = [], []
        for _ in range(max(1, chunks // 2)):
            lite_times.append(chunked(lite_steps, n, 2))
            raw_times.append(chunked(raw, n, 2))
        return {"lite": statistics.median(lite_times), "torch_same_process": statistics.median(raw_times)}
