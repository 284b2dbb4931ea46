"""DDPStrategy inside real processes (lite_testing.run_processes): training, no_sync, collectives, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from strategies_testutil import assert_params_close, reference_params, train
from torch.nn.parallel import DistributedDataParallel

from lite_strategies import DDPStrategy
from lite_testing import run_processes

CPU2 = [torch.device("cpu")] * 2


def _train_ddp(rank: int, world_size: int, path: str) -> dict[str, Any]:
    strategy = DDPStrategy(devices=CPU2)
    strategy.setup_environment()
    try:
        out = train(strategy, out=path)
        loaded = strategy.load_checkpoint(path)  # every rank, after rank 0 saved (save waits)
        return {
            "params": out["params"],
            "loaded": loaded["model"],
            "sampler": strategy.distributed_sampler_kwargs,
        }
    finally:
        strategy.teardown()


def test_ddp_trains_like_one_process_on_the_global_batch(tmp_path: Path) -> None:
    results = run_processes(_train_ddp, 2, str(tmp_path / "ckpt.pt"), init=False, timeout=60)
    expected = reference_params()
    for rank, result in enumerate(results):
        assert result["sampler"] == {"num_replicas": 2, "rank": rank}
        assert_params_close(result["params"], expected)
        assert_params_close(result["loaded"], expected)


def _no_sync(rank: int, world_size: int) -> dict[str, Any]:
    strategy = DDPStrategy(devices=CPU2)
    strategy.setup_environment()
    try:
        model = strategy.setup_module(torch.nn.Linear(1, 1, bias=False))
        assert isinstance(model, DistributedDataParallel)
        x = torch.full((1, 1), float(rank + 1))
        with strategy.no_backward_sync(model):
            strategy.backward(model(x).sum(), model)
        local = model.module.weight.grad.clone()
        model.zero_grad()
        strategy.backward(model(x).sum(), model)
        synced = model.module.weight.grad.clone()
        return {
            "local": local.item(),
            "synced": synced.item(),
            "mean": strategy.all_reduce(torch.tensor(float(rank))).item(),
            "sum": strategy.all_reduce(torch.tensor(float(rank)), op="sum").item(),
            "gathered": strategy.all_gather(torch.tensor([rank])).flatten().tolist(),
            "broadcast": strategy.broadcast({"from": rank}, src=1),
            "keys": sorted(strategy.get_module_state_dict(model)),
        }
    finally:
        strategy.teardown()


def test_no_backward_sync_and_collectives() -> None:
    results = run_processes(_no_sync, 2, init=False, timeout=60)
    for rank, r in enumerate(results):
        assert r["local"] == rank + 1  # not averaged inside no_backward_sync
        assert r["synced"] == 1.5  # averaged outside it
        assert r["mean"] == 0.5 and r["sum"] == 1.0
        assert r["gathered"] == [0, 1]
        assert r["broadcast"] == {"from": 1}
        assert r["keys"] == ["weight"]  # no "module." prefix
