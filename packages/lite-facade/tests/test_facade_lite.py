"""LightningLite's methods and the wrappers setup returns, on the CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lite_facade import LightningLite, LiteConfigurationError
from lite_facade.lite import LightningLite as SeedPathLightningLite
from lite_testing import run_if


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


def lite(**flags: Any) -> Lite:
    return Lite(accelerator="cpu", **flags)


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_seed_import_path_is_the_same_class() -> None:
    assert SeedPathLightningLite is LightningLite


def test_run_passes_arguments_and_returns_the_result() -> None:
    assert lite().run(lambda self, a, b: a + b, 2, 3) == 5


def test_bad_flags_fail_at_construction_before_run() -> None:
    with pytest.raises(LiteConfigurationError, match="strategy"):
        Lite(strategy="not-a-strategy")


def test_setup_keeps_the_originals_reachable_and_the_keys_plain() -> None:
    def body(self: Lite) -> None:
        model, optimizer = model_and_optimizer()
        lite_model, lite_optimizer = self.setup(model, optimizer)
        assert lite_model.module is model
        assert lite_optimizer.optimizer is optimizer
        assert list(lite_model.state_dict()) == list(model.state_dict())
        assert lite_optimizer.param_groups is optimizer.param_groups
        assert lite_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
        model.custom_attribute = "x"
        assert lite_model.custom_attribute == "x"  # attribute access falls through
        only_model = self.setup(nn.Linear(2, 2))
        assert isinstance(only_model, nn.Module) and not isinstance(only_model, tuple)

    lite().run(body)


def test_setting_up_a_set_up_object_is_a_clear_error() -> None:
    def body(self: Lite) -> None:
        model, optimizer = self.setup(*model_and_optimizer())
        assert self._models_setup == 1
        with pytest.raises(ValueError, match="A model should be passed only once to the"):
            self.setup(model)
        with pytest.raises(ValueError, match="An optimizer should be passed only once to the"):
            self.setup(nn.Linear(1, 1), optimizer)
        loader = self.setup_dataloaders(DataLoader(TensorDataset(torch.zeros(4, 1))))
        with pytest.raises(ValueError, match="A dataloader should be passed only once to the"):
            self.setup_dataloaders(loader)
        with pytest.raises(TypeError, match="Only PyTorch DataLoader are currently supported"):
            self.setup_dataloaders(range(2))  # type: ignore[arg-type]
        assert self._models_setup == 1

    lite().run(body)


def test_a_training_step_matches_plain_pytorch() -> None:
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    reference, ref_opt = model_and_optimizer()
    for _ in range(3):
        ref_opt.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        ref_opt.step()

    def body(self: Lite) -> nn.Module:
        model, optimizer = self.setup(*model_and_optimizer())
        for _ in range(3):
            optimizer.zero_grad()
            self.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
        return model.module

    trained = lite().run(body)
    for a, b in zip(trained.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_move_to_device_false_leaves_placement_to_the_user() -> None:
    def body(self: Lite) -> str:
        model = nn.Linear(2, 1).to("meta")  # somewhere setup would otherwise move it away from
        return str(self.setup(model, move_to_device=False).module.weight.device)

    assert lite().run(body) == "meta"


def test_a_strategy_object_keeps_its_options_and_gets_the_flags() -> None:
    from lite_strategies import DDPForkStrategy

    def body(self: Lite) -> tuple[int, bool]:
        model = self.setup(nn.Linear(2, 1))
        return self.world_size, bool(model.forward_module.find_unused_parameters)

    strategy = DDPForkStrategy(find_unused_parameters=True)
    assert Lite(accelerator="cpu", devices=2, strategy=strategy).run(body) == (2, True)


def test_backward_passes_extra_arguments_on() -> None:
    def body(self: Lite) -> None:
        model = self.setup(nn.Linear(2, 1))
        loss = model(torch.ones(1, 2)).sum()
        self.backward(loss, retain_graph=True)
        self.backward(loss)  # would raise without retain_graph above
        w = model.module.weight
        torch.testing.assert_close(w.grad, torch.full_like(w, 2.0))

    lite().run(body)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # the plain path and the precision's
def test_backward_of_a_number_says_to_pass_the_tensor(precision: str) -> None:
    def body(self: Lite) -> None:
        model = self.setup(nn.Linear(2, 1))
        loss = model(torch.ones(1, 2)).sum()
        with pytest.raises(
            TypeError, match=r"backward\(\) takes the loss as a tensor, got float.*loss\.item\(\)"
        ):
            self.backward(loss.item())

    lite(precision=precision).run(body)


def test_hooks_on_the_set_up_model_still_run() -> None:
    seen: list[str] = []

    def body(self: Lite) -> None:
        model = self.setup(nn.Linear(2, 2))
        model(torch.ones(1, 2))  # the fast path: no hook anywhere
        local = model.register_forward_hook(lambda *_: seen.append("local"))
        model(torch.ones(1, 2))
        local.remove()
        everywhere = nn.modules.module.register_module_forward_pre_hook(lambda *_: seen.append("global"))
        try:
            model(torch.ones(1, 2))
        finally:
            everywhere.remove()
        model(torch.ones(1, 2))

    lite().run(body)
    # one global call for the wrapper and one for the Linear inside it
    assert seen == ["local", "global", "global"]


@pytest.mark.parametrize(
    ("precision", "scaled"), [("32-true", False), ("bf16-mixed", False), ("16-mixed", True)]
)
def test_step_and_backward_go_through_the_precision_only_when_it_scales(precision: str, scaled: bool) -> None:
    def body(self: Lite) -> dict[str, Any]:
        model, optimizer = self.setup(*model_and_optimizer())
        loss = model(torch.randn(4, 4)).sum()
        self.backward(loss)
        optimizer.step()
        scaler = getattr(self._precision, "_scaler", None)
        return {"scaler_used": scaler is not None and scaler._scale is not None}

    assert lite(precision=precision).run(body)["scaler_used"] is scaled


def test_lr_scheduler_accepts_the_wrapped_optimizer() -> None:
    def body(self: Lite) -> float:
        _, optimizer = self.setup(*model_and_optimizer())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        optimizer.step()
        scheduler.step()
        return float(optimizer.param_groups[0]["lr"])

    assert lite().run(body) == pytest.approx(0.05)


def test_bf16_forward_runs_in_bf16_and_returns_float32() -> None:
    seen: list[torch.dtype] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.linear(x)
            seen.append(out.dtype)
            return out

    def body(self: Lite) -> torch.Tensor:
        model = self.setup(Probe())
        with self.autocast():
            inside = torch.mm(torch.ones(2, 2), torch.ones(2, 2))
        assert inside.dtype == torch.bfloat16
        return model(torch.ones(2, 4))

    out = lite(precision="bf16").run(body)
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32


def test_double_precision_runs_float64_and_returns_the_default_dtype() -> None:
    seen: list[torch.dtype] = []

    def body(self: Lite) -> torch.Tensor:
        model = self.setup(nn.Linear(3, 1))
        assert model.module.weight.dtype == torch.float64
        model.module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        return model(torch.ones(2, 3))

    assert lite(precision=64).run(body).dtype == torch.float32
    assert seen == [torch.float64]


def test_setup_dataloaders_one_or_many_and_batches_on_device() -> None:
    data = TensorDataset(torch.arange(10.0).view(10, 1))

    def body(self: Lite) -> None:
        one = self.setup_dataloaders(DataLoader(data, batch_size=4))
        assert len(one) == 3
        first, second = self.setup_dataloaders(DataLoader(data), DataLoader(data), move_to_device=False)
        assert len(first) == 10 and len(second) == 10
        (batch,) = next(iter(one))
        assert batch.device == self.device

    lite().run(body)


def test_to_device_moves_collections() -> None:
    def body(self: Lite) -> Any:
        return self.to_device({"a": [torch.ones(1)], "b": (torch.zeros(1), "text")})

    out = lite().run(body)
    assert out["b"][1] == "text" and out["a"][0].device.type == "cpu"


def test_single_process_collectives_are_identities() -> None:
    def body(self: Lite) -> None:
        assert (self.world_size, self.global_rank, self.local_rank, self.node_rank) == (1, 0, 0, 0)
        assert self.is_global_zero
        t = torch.arange(3)
        torch.testing.assert_close(self.all_gather(t), t)
        assert int(self.all_gather(5)) == 5
        assert self.broadcast({"x": 1}) == {"x": 1}
        self.barrier()

    lite().run(body)


def test_print_only_on_rank_zero(capsys: pytest.CaptureFixture[str]) -> None:
    lite().run(lambda self: self.print("hello", 1))
    assert capsys.readouterr().out == "hello 1\n"


def test_save_and_load_round_trip_with_plain_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"

    def body(self: Lite) -> None:
        model, optimizer = self.setup(*model_and_optimizer())
        self.save({"model": model, "optimizer": optimizer, "epoch": 3}, path)
        restored = self.load(path)
        assert restored["epoch"] == 3
        fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        fresh.load_state_dict(restored["model"])
        for a, b in zip(fresh.parameters(), model.module.parameters()):
            torch.testing.assert_close(a, b)
        self.save(model.state_dict(), tmp_path / "weights.pt")
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).load_state_dict(
            self.load(tmp_path / "weights.pt")
        )

    lite().run(body)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "weights.pt"]  # no temporary files left


def test_load_into_a_state_resumes_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    data = torch.randn(8, 4)

    def step(model: Any, optimizer: Any, lite_: Lite) -> float:
        optimizer.zero_grad()
        loss = model(data).pow(2).mean()
        lite_.backward(loss)
        optimizer.step()
        return loss.item()

    def body(self: Lite) -> dict[str, Any]:
        model, optimizer = self.setup(*model_and_optimizer())
        optimizer.optimizer.param_groups[0]["momentum"] = 0.9  # so the optimizer state matters
        step(model, optimizer, self)
        self.save({"model": model, "optimizer": [optimizer], "step": 1, "note": "kept"}, path)
        expected_next = step(model, optimizer, self)

        torch.manual_seed(123)  # a different start: the load must overwrite it
        fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        fresh_model, fresh_optimizer = self.setup(
            fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
        )
        state = {"model": fresh_model, "optimizer": [fresh_optimizer], "step": 0}
        rest = self.load(path, state)
        with pytest.raises(ValueError, match="no entries"):
            self.load(path, {"model": fresh_model, "scheduler": 1})
        return {
            "rest": rest,
            "step": state["step"],
            "next": step(fresh_model, fresh_optimizer, self),
            "expected": expected_next,
        }

    out = lite().run(body)
    assert out["rest"] == {"note": "kept"} and out["step"] == 1
    assert out["next"] == pytest.approx(out["expected"], rel=1e-6)


def test_seed_everything_works_on_the_class_and_the_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # recorded, so monkeypatch restores them afterwards
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    assert LightningLite.seed_everything(7) == 7
    a = torch.rand(3)
    assert lite().seed_everything(7) == 7
    torch.testing.assert_close(torch.rand(3), a)


# -- two processes ------------------------------------------------------------------------------------


def _distributed_body(self: Lite) -> dict[str, Any]:
    data = TensorDataset(torch.arange(8.0).view(8, 1))
    loader = self.setup_dataloaders(DataLoader(data, batch_size=2, shuffle=True))
    seen = torch.cat([batch for (batch,) in loader]).flatten()
    model, optimizer = self.setup(*model_and_optimizer())
    loss = model(torch.full((2, 4), float(self.global_rank))).sum()
    self.backward(loss)
    optimizer.step()
    gathered = self.all_gather(torch.tensor([self.global_rank]))
    return {
        "world_size": self.world_size,
        "rank": self.global_rank,
        "gathered": gathered,
        "sampler": type(loader.dataloader.sampler).__name__,
        "seen": self.all_gather(seen),
        "weight": model.module[0].weight.detach().clone(),
        "object": self.broadcast(f"from {self.global_rank}"),
        "threads": torch.get_num_threads(),
    }


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_two_processes_return_rank_zero_result(strategy: str) -> None:
    result = Lite(accelerator="cpu", devices=2, strategy=strategy).run(_distributed_body)
    assert result["world_size"] == 2 and result["rank"] == 0
    assert result["gathered"].flatten().tolist() == [0, 1]
    assert result["sampler"] == DistributedSampler.__name__
    assert sorted(result["seen"].flatten().tolist()) == [float(i) for i in range(8)]
    assert result["object"] == "from 0"
    if "OMP_NUM_THREADS" not in os.environ:  # each CPU process gets its share of the cores
        assert result["threads"] == max(1, (os.cpu_count() or 1) // 2)


# -- CUDA (runs where a GPU exists) ---------------------------------------------------------------------


@run_if(min_cuda_gpus=1)
@pytest.mark.parametrize("precision", ["32", "16-mixed", "bf16-mixed", "bf16-true"])
def test_training_on_cuda(precision: str, tmp_path: Path) -> None:
    def body(self: Lite) -> dict[str, Any]:
        model, optimizer = self.setup(*model_and_optimizer())
        data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
        loader = self.setup_dataloaders(DataLoader(data, batch_size=8))
        losses = []
        for x, y in loader:
            assert x.device.type == "cuda"
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            self.backward(loss)
            optimizer.step()
            losses.append(float(loss))
        self.save({"model": model}, tmp_path / "cuda.pt")
        restored = self.load(tmp_path / "cuda.pt")
        return {
            "device": str(self.device),
            "param_device": str(model.module[0].weight.device),
            "loaded_device": str(next(iter(restored["model"].values())).device),
            "losses": losses,
            "moved": str(self.to_device(torch.zeros(1)).device),
        }

    out = Lite(accelerator="gpu", devices=1, precision=precision).run(body)
    assert out["device"] == "cuda:0" and out["param_device"] == "cuda:0" and out["loaded_device"] == "cuda:0"
    assert out["moved"] == "cuda:0"
    assert all(torch.isfinite(torch.tensor(out["losses"])))


def test_seed_wrapper_import_paths() -> None:
    from lite_facade.lite.lite import LightningLite as SeedModuleLite
    from lite_facade.lite.wrappers import _LiteDataLoader, _LiteModule, _LiteOptimizer

    assert SeedModuleLite is LightningLite
    loader = _LiteDataLoader(DataLoader(range(5), batch_size=2))
    assert len(loader) == 3 and [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]
    module = nn.Linear(2, 2)
    wrapped = _LiteModule(module, lite()._precision_plugin)
    assert wrapped.module is module and wrapped(torch.ones(1, 2)).shape == (1, 2)
    assert issubclass(_LiteOptimizer, torch.optim.Optimizer)


def test_no_backward_sync_keeps_gradients_local_until_the_synced_backward() -> None:
    def body(self: Lite) -> dict[str, Any]:
        torch.manual_seed(0)
        model = self.setup(nn.Linear(3, 1, bias=False))
        rank_input = torch.full((1, 3), float(self.global_rank + 1))
        with self.no_backward_sync(model):
            self.backward(model(rank_input).sum())
        local = model.module.weight.grad.clone()
        self.backward(model(rank_input).sum())  # synchronized: averages the accumulated gradients
        with pytest.raises(TypeError, match="setup"), self.no_backward_sync(nn.Linear(1, 1)):
            pass
        return {"local": self.all_gather(local), "synced": self.all_gather(model.module.weight.grad)}

    out = lite(strategy="ddp_fork", devices=2).run(body)
    local, synced = out["local"], out["synced"]
    assert not torch.equal(local[0], local[1])  # each rank kept its own gradient
    torch.testing.assert_close(synced[0], synced[1])
    torch.testing.assert_close(synced[0], local[0] + local[1])  # (2 * r1 + 2 * r2) / 2


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_clip_gradients_by_norm_and_by_value(precision: str) -> None:
    def body(self: Lite) -> dict[str, Any]:
        model, optimizer = self.setup(*model_and_optimizer())
        self.backward(model(torch.ones(2, 4) * 10).mean() * 1e-2)  # small enough for float16 x 65536
        norm = self.clip_gradients(model, optimizer, max_norm=0.05)
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        optimizer.step()
        self.backward(model(torch.ones(2, 4)).sum())
        self.clip_gradients(model, optimizer, clip_val=1e-3)
        largest = max(float(p.grad.abs().max()) for p in model.parameters())
        with pytest.raises(ValueError, match="exactly one"):
            self.clip_gradients(model, optimizer)
        return {"norm": float(norm), "clipped": float(clipped), "largest": largest}

    reference, _ = model_and_optimizer()
    (reference(torch.ones(2, 4) * 10).mean() * 1e-2).backward()
    true_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf")))
    out = lite(precision=precision).run(body)
    assert out["norm"] == pytest.approx(true_norm, rel=1e-2)  # unscaled first under 16-mixed
    assert true_norm > 0.05 and out["clipped"] == pytest.approx(0.05, rel=1e-3)
    assert out["largest"] <= 1e-3 + 1e-9


def test_clip_gradients_goes_through_the_strategy() -> None:
    """A strategy whose gradients live elsewhere (sharded, in an engine) decides how to clip them."""
    import lite_strategies

    calls: list[tuple[str, Any]] = []

    class Recording(lite_strategies.SingleDeviceStrategy):
        def clip_gradients_norm(
            self, module: nn.Module, optimizer: Any, max_norm: float, *a: Any, **k: Any
        ) -> Any:
            calls.append(("norm", optimizer))
            return super().clip_gradients_norm(module, optimizer, max_norm, *a, **k)

        def clip_gradients_value(self, module: nn.Module, optimizer: Any, clip_val: float) -> None:
            calls.append(("value", optimizer))
            super().clip_gradients_value(module, optimizer, clip_val)

    def body(self: Lite) -> Any:
        model, raw_optimizer = model_and_optimizer()
        model, optimizer = self.setup(model, raw_optimizer)
        self.backward(model(torch.ones(2, 4)).sum())
        self.clip_gradients(model, optimizer, max_norm=1.0)
        self.clip_gradients(model, optimizer, clip_val=1.0)
        return raw_optimizer

    raw_optimizer = Lite(strategy=Recording()).run(body)
    assert calls == [("norm", raw_optimizer), ("value", raw_optimizer)]  # the unwrapped optimizer


def test_all_reduce_of_tensors_and_numbers() -> None:
    def body(self: Lite) -> Any:
        return self.all_reduce(torch.tensor(float(self.global_rank + 1)), reduce_op="sum"), self.all_reduce(
            self.global_rank * 2
        )

    total, mean = lite(strategy="ddp_fork", devices=2).run(body)
    assert float(total) == 3.0 and float(mean) == 1.0


def test_what_only_the_strategy_can_refuse_is_a_configuration_error_at_construction() -> None:
    # A strategy can refuse the resolved settings only when it is built with them: still at construction.
    from lite_strategies import DDPStrategy, StrategyError

    class OneDeviceOnly(DDPStrategy):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if len(self.devices) > 1:
                raise StrategyError("this strategy takes one device per node")

    with pytest.raises(LiteConfigurationError, match="one device per node") as err:
        Lite(accelerator="cpu", devices=2, strategy=OneDeviceOnly())
    assert "strategy='ddp'" in str(err.value) and "devices=2" in str(err.value)
