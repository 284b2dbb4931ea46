"""setup_module / setup_optimizers and init_module, on the CPU (fsdp on 2 real gloo processes)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lite_facade import LightningLite
from lite_testing import run_processes

TIMEOUT = 120


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


def test_setup_module_then_setup_optimizers_train_like_setup() -> None:
    def train(self: Lite, split: bool) -> list[float]:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if split:
            lite_model = self.setup_module(model)
            lite_optimizer = self.setup_optimizers(optimizer)
        else:
            lite_model, lite_optimizer = self.setup(model, optimizer)
        assert lite_model.module is model and lite_optimizer.optimizer is optimizer
        for _ in range(3):
            lite_optimizer.zero_grad()
            self.backward(lite_model(torch.ones(2, 4)).sum())
            lite_optimizer.step()
        return model.weight.detach().flatten().tolist()

    lite = Lite(accelerator="cpu", precision="bf16")
    assert lite.run(train, True) == lite.run(train, False)


def test_setup_optimizers_returns_one_or_a_tuple_and_refuses_twice() -> None:
    def body(self: Lite) -> None:
        model = self.setup_module(nn.Linear(2, 2))
        a = torch.optim.SGD(model.parameters(), lr=0.1)
        b = torch.optim.Adam(model.parameters())
        one = self.setup_optimizers(a)
        assert isinstance(one, torch.optim.SGD) and one.optimizer is a
        both = self.setup_optimizers(torch.optim.SGD(model.parameters(), lr=1.0), b)
        assert isinstance(both, tuple) and len(both) == 2 and both[1].optimizer is b
        with pytest.raises(ValueError, match="already set up"):
            self.setup_optimizers(one)
        with pytest.raises(ValueError, match="at least one optimizer"):
            self.setup_optimizers()
        with pytest.raises(TypeError, match="got Linear"):
            self.setup_optimizers(nn.Linear(1, 1))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="already set up"):
            self.setup_module(model)

    Lite(accelerator="cpu").run(body)


@pytest.mark.parametrize("strategy", ["deepspeed", "ddp_sharded"])
def test_strategies_that_set_model_and_optimizer_up_together_say_to_use_setup(strategy: str) -> None:
    # The check needs only the strategy's name: it runs before the optional backend is used.
    lite = Lite.__new__(Lite)

    class Named:
        strategy_name = strategy

    lite._strategy = Named()  # type: ignore[assignment]
    for call in (lambda: lite._refuse_split_setup("setup_module()"), lambda: lite._refuse_split_setup("x")):
        with pytest.raises(RuntimeError, match=r"Use `model, optimizer = self.setup\(model, optimizer\)`"):
            call()


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32", torch.float32),
        ("64", torch.float64),
        ("bf16-true", torch.bfloat16),
        ("bf16-mixed", torch.float32),
    ],
)
def test_init_module_creates_on_the_device_in_the_precision_dtype(precision: str, dtype: torch.dtype) -> None:
    def body(self: Lite) -> None:
        with self.init_module():
            model = nn.Linear(3, 3)
        assert model.weight.dtype is dtype and model.weight.device == self.device
        assert torch.get_default_dtype() is torch.float32  # restored after the block
        assert not model.weight.is_meta and model.weight.abs().sum() > 0  # initialised

    Lite(accelerator="cpu", precision=precision).run(body)


def test_init_module_empty_init_skips_the_initialisation() -> None:
    def body(self: Lite) -> None:
        torch.manual_seed(0)
        before = torch.random.get_rng_state()
        with self.init_module(empty_init=True):
            model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1))
        # nn.Linear's reset_parameters draws from the RNG: skipped, nothing was drawn
        assert torch.equal(torch.random.get_rng_state(), before)
        assert not model[0].weight.is_meta
        with self.init_module(empty_init=False):
            nn.Linear(64, 64)
        assert not torch.equal(torch.random.get_rng_state(), before)
        model.load_state_dict(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1)).state_dict())  # then load
        self.setup(model)

    Lite(accelerator="cpu").run(body)


def test_a_meta_model_under_a_strategy_that_cannot_materialise_it_is_refused() -> None:
    def body(self: Lite) -> None:
        with torch.device("meta"):
            model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        with pytest.raises(ValueError, match=r"on the meta device \(0.weight, 0.bias, 1.weight and 4 more\)"):
            self.setup(model)
        with pytest.raises(ValueError, match="strategy='single_device' cannot materialise them"):
            self.setup_module(model)

    Lite(accelerator="cpu").run(body)


def _fsdp_meta(rank: int, world_size: int) -> dict[str, Any]:
    torch.set_num_threads(1)

    class Body(LightningLite):
        def run(self) -> dict[str, Any]:
            torch.manual_seed(0)
            with self.init_module():
                model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
            on_meta = model[0].weight.is_meta
            model = self.setup_module(model)
            optimizer = self.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
            loss = model(torch.ones(4, 8)).sum()
            self.backward(loss)
            optimizer.step()
            full = {k: v.full_tensor() for k, v in model.state_dict().items()}
            return {
                "on_meta": on_meta,
                "finite": all(bool(torch.isfinite(v).all()) for v in full.values()),
                "nonzero": all(bool(v.abs().sum() > 0) for k, v in full.items() if k.endswith("weight")),
                "weight": full["0.weight"].flatten()[:5].tolist(),
            }

    return Body(accelerator="cpu", strategy="fsdp", devices=world_size).run()


def test_fsdp_init_module_builds_on_meta_and_setup_materialises() -> None:
    results = run_processes(_fsdp_meta, 2, init=False, timeout=TIMEOUT)
    for r in results:
        assert r["on_meta"] and r["finite"] and r["nonzero"]
    assert results[0]["weight"] == results[1]["weight"]  # one model, sharded, not two


def _fsdp_missing_reset(rank: int, world_size: int) -> str:
    class NoReset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    class Body(LightningLite):
        def run(self) -> str:
            with self.init_module():
                model = nn.Sequential(nn.Linear(4, 4), NoReset())
            try:
                self.setup_module(model)
            except Exception as err:  # the message is the result
                return f"{type(err).__name__}: {err}"
            return "no error"

    return Body(accelerator="cpu", strategy="fsdp", devices=world_size).run()


def test_fsdp_meta_model_without_reset_parameters_is_named() -> None:
    for message in run_processes(_fsdp_missing_reset, 2, init=False, timeout=TIMEOUT):
        assert "reset_parameters(), which these lack: 1 (NoReset)" in message
