"""The 'xla' strategy and its launcher.

What runs for real, on one XLA:CPU device (``PJRT_DEVICE=CPU``): training through the strategy
(compared with the same steps on the CPU), saving and loading checkpoints, and the launcher
running a function through torch_xla's ``xmp.spawn`` and returning its tensor.

What runs only against a FAKE: the multi-replica paths (all_gather / all_reduce / broadcast /
barrier across replicas, the sampler split, gradient averaging, rank-0-only writes). Collectives
between two XLA:CPU devices abort inside torch_xla, so those tests replace the torch_xla
functions the strategy calls (``xm.all_gather``, ``xm.all_reduce``, ``xm.rendezvous``,
``xm.reduce_gradients``, the differentiable ``all_gather``, ``xr.world_size``,
``xr.global_ordinal`` ...) with :class:`FakeXLA`, which records each call and answers as a
replica of a two-replica job would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla")

import torch
from strategies_testutil import STEPS, assert_params_close, global_batch, make_model, train
from torch import nn

import lite_strategies
from lite_precision import get_precision
from lite_strategies import ProcessFailedError, StrategyError
from lite_strategies import _xla as xla_module
from lite_strategies._xla import XLAStrategy
from lite_strategies.launchers._xla import XLALauncher, _worker

XLA0 = torch.device("xla", 0)


@pytest.fixture(scope="module", autouse=True)
def _xla_cpu() -> Iterator[None]:
    """Run this module on XLA:CPU: PJRT_DEVICE=CPU unless the caller chose a device type."""
    chosen = os.environ.get("PJRT_DEVICE")
    if chosen not in (None, "CPU"):
        pytest.skip(f"these tests run on XLA:CPU; PJRT_DEVICE={chosen!r}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PJRT_DEVICE", "CPU")
        # torch_xla sets this (setdefault) when it runs a function in this process
        mp.setenv("PJRT_LOCAL_PROCESS_COUNT", "1")
        yield


def _launched(**kwargs: Any) -> XLAStrategy:
    strategy = XLAStrategy(devices=[XLA0], **kwargs)
    strategy.setup_environment()
    return strategy


# ---------------------------------------------------------------------------- real: XLA:CPU


def test_training_on_xla_cpu_matches_the_cpu() -> None:
    strategy = _launched()
    assert strategy.root_device.type == "xla"
    assert (strategy.world_size, strategy.global_rank, strategy.is_distributed) == (1, 0, False)
    assert strategy.distributed_sampler_kwargs is None
    result = train(strategy)
    expected = train(lite_strategies.SingleDeviceStrategy())["params"]
    assert all(t.device.type == "xla" for t in result["params"].values())
    assert_params_close(result["params"], expected)


def test_bf16_true_trains_in_bfloat16_on_xla() -> None:
    strategy = _launched(precision=get_precision("bf16-true", "xla"))
    model = make_model()
    model, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.SGD(model.parameters(), lr=0.1)]
    )
    x, y = (strategy.batch_to_device(t) for t in global_batch())
    before = next(model.parameters()).detach().cpu().clone()
    loss = nn.functional.mse_loss(model(x.to(torch.bfloat16)), y.to(torch.bfloat16))
    strategy.backward(loss, model)
    strategy.optimizer_step(optimizer)
    param = next(model.parameters())
    assert param.dtype == torch.bfloat16 and param.device.type == "xla"
    assert not torch.equal(param.detach().cpu(), before)


def _step(strategy: XLAStrategy, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    x, y = (strategy.batch_to_device(t) for t in global_batch())
    loss = nn.functional.mse_loss(model(x), y)
    strategy.backward(loss, model)
    strategy.optimizer_step(optimizer)
    optimizer.zero_grad()
    return float(loss.item())


def test_checkpoint_is_written_on_the_cpu_and_resumes_on_xla(tmp_path: Path) -> None:
    strategy = _launched()
    model = make_model()
    model, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.Adam(model.parameters(), lr=0.01)]
    )
    for _ in range(STEPS):
        _step(strategy, model, optimizer)
    path = tmp_path / "ckpt.pt"
    strategy.save_checkpoint(path, {"model": model, "optimizer": optimizer, "step": STEPS})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    on_disk = torch.load(path, map_location="cpu", weights_only=True)  # loads anywhere, like xm.save's files
    assert {t.device.type for t in on_disk["model"].values()} == {"cpu"}
    expected_next = _step(strategy, model, optimizer)

    loaded = strategy.load_checkpoint(path)
    assert {t.device.type for t in loaded["model"].values()} == {"xla"}

    fresh = make_model()
    fresh_model, (fresh_opt,) = strategy.setup_module_and_optimizers(
        fresh, [torch.optim.Adam(fresh.parameters(), lr=0.01)]
    )
    state: dict[str, Any] = {"model": fresh_model, "optimizer": fresh_opt, "step": 0}
    rest = strategy.load_checkpoint(path, state)
    assert rest == {} and state["step"] == STEPS
    assert _step(strategy, fresh_model, fresh_opt) == pytest.approx(expected_next, rel=1e-6)


def _on_device(strategy: XLAStrategy, value: int) -> torch.Tensor:
    assert strategy.root_device.type == "xla" and strategy.world_size == 1
    return torch.arange(3, device=strategy.root_device) * value


def test_launcher_runs_one_process_and_returns_its_tensor() -> None:
    strategy = XLAStrategy(devices=[XLA0])
    assert isinstance(strategy.launcher, XLALauncher)
    result = strategy.launcher.launch(_on_device, strategy, 5)
    assert result.device.type == "cpu"
    assert torch.equal(result, torch.tensor([0, 5, 10]))


def _boom() -> None:
    raise KeyError("boom")


def test_launcher_raises_the_functions_error_in_this_process() -> None:
    strategy = XLAStrategy(devices=[XLA0])
    with pytest.raises(KeyError, match="boom"):
        strategy.launcher.launch(_boom)


def test_worker_in_a_started_process_reports_rank_and_traceback(tmp_path: Path) -> None:
    # parent_pid that is not this process: the worker behaves as in a process torch_xla started
    strategy = XLAStrategy(devices=[XLA0])
    with pytest.raises(ProcessFailedError, match="rank 0 raised KeyError") as info:
        _worker(0, strategy, _boom, (), {}, str(tmp_path / "r.pt"), [], -1)
    assert info.value.rank == 0 and "_boom" in info.value.remote_traceback
    _worker(0, strategy, _on_device, (strategy, 2), {}, str(tmp_path / "r.pt"), [], -1)
    assert torch.equal(torch.load(tmp_path / "r.pt", weights_only=True), torch.tensor([0, 2, 4]))


# ---------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": get_precision("bf16-mixed", "xla")}, "cannot run precision='bf16-mixed'"),
        ({"start_method": "forkserver"}, "start_method='forkserver'"),
        ({"accelerator": "cpu"}, "cannot run on accelerator 'cpu'"),
        ({"devices": [torch.device("cpu")]}, "do not belong to accelerator 'xla'"),
        ({"find_unused_parameters": True}, "unknown keyword"),
    ],
)
def test_construction_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        XLAStrategy(**kwargs)


def test_builds_without_importing_torch_xla_and_registry_row() -> None:
    code = (
        "import sys, torch, lite_strategies\n"
        "s = lite_strategies.get_strategy_spec('tpu_spawn').load()(start_method='fork')\n"
        "t = s.configured(devices=[torch.device('xla', 0)] * 2)\n"
        "assert (t.world_size, t.global_rank, t.start_method) == (2, 0, 'fork'), t\n"
        "assert str(t.root_device) == 'xla:0'\n"
        "assert 'torch_xla' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    spec = lite_strategies.get_strategy_spec("xla_spawn")
    assert (spec.name, spec.launcher, spec.accelerators) == ("xla", "xla", ("xla",))


def test_setup_environment_refuses_a_replica_count_torch_xla_does_not_run() -> None:
    strategy = XLAStrategy(devices=[XLA0, torch.device("xla", 1)])
    with pytest.raises(StrategyError, match="torch_xla runs 1 replica"):
        strategy.setup_environment()


# ---------------------------------------------------------------------------- FAKE: two replicas


class FakeXLA:
    """A FAKE of the torch_xla functions the strategy calls, as replica ``rank`` of ``world`` sees them.

    Every call is appended to ``calls``. ``all_reduce`` (a sum) adds ``others[i]`` (what the
    other replicas contribute to the i-th reduction; zeros when not given) to this replica's
    tensor; ``all_gather`` concatenates this replica's tensor with ``others`` along dim 0.
    """

    REDUCE_SUM, REDUCE_MAX, REDUCE_MIN, REDUCE_MUL = "sum", "max", "min", "mul"

    def __init__(self, rank: int, world: int = 2, others: list[torch.Tensor] | None = None) -> None:
        self.rank, self.world = rank, world
        self.others = list(others or [])
        self.calls: list[tuple[Any, ...]] = []
        self.sent: list[torch.Tensor] = []

    # torch_xla.runtime
    def world_size(self) -> int:
        return self.world

    def global_ordinal(self) -> int:
        return self.rank

    def local_ordinal(self) -> int:
        return self.rank

    def host_index(self) -> int:
        return 0

    # torch_xla.core.xla_model
    def all_reduce(
        self, reduce_type: str, tensor: torch.Tensor, scale: float = 1.0, groups: Any = None
    ) -> Any:
        self.calls.append(("all_reduce", reduce_type, scale, groups))
        self.sent.append(tensor.clone())
        other = self.others.pop(0) if self.others else torch.zeros_like(tensor)
        if reduce_type == "sum":
            return (tensor + other.to(tensor.dtype)) * scale
        return torch.maximum(tensor, other) if reduce_type == "max" else torch.minimum(tensor, other)

    def all_gather(self, tensor: torch.Tensor, dim: int = 0, groups: Any = None) -> torch.Tensor:
        self.calls.append(("all_gather", tuple(tensor.shape), dim, groups))
        parts = [tensor] * self.world
        return torch.cat(parts, dim=dim)

    def rendezvous(self, tag: str) -> None:
        self.calls.append(("rendezvous", tag))

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append(("reduce_gradients", optimizer))

    def sync(self) -> None:
        self.calls.append(("sync",))


@pytest.fixture
def fake_replica(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the strategy a replica of a FAKE two-replica XLA job (tensors stay on the CPU)."""

    def make(rank: int, others: list[torch.Tensor] | None = None) -> tuple[XLAStrategy, FakeXLA]:
        fake = FakeXLA(rank, others=others)
        monkeypatch.setattr(xla_module, "_xm", lambda: fake)
        monkeypatch.setattr(xla_module, "_xr", lambda: fake)
        monkeypatch.setattr(xla_module, "_xf", lambda: fake)
        monkeypatch.setattr(xla_module, "_xla_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(xla_module, "_sync", lambda: fake.sync())
        strategy = XLAStrategy(devices=[XLA0, torch.device("xla", 1)])
        strategy.setup_environment()
        return strategy, fake

    return make


def test_fake_two_replicas_ranks_and_sampler_split(fake_replica: Any) -> None:
    strategy, _ = fake_replica(1)
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.is_global_zero) == (
        2,
        1,
        1,
        False,
    )
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 1}


def test_fake_optimizer_step_averages_gradients_before_stepping(fake_replica: Any) -> None:
    strategy, fake = fake_replica(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.ones(1, 2)).sum().backward()
    original_step = optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        fake.calls.append(("step",))
        return original_step(*args, **kwargs)

    optimizer.step = step  # type: ignore[method-assign]
    before = model.weight.detach().clone()
    strategy.optimizer_step(optimizer)
    assert fake.calls == [("reduce_gradients", optimizer), ("step",), ("sync",)]
    assert not torch.equal(model.weight, before)


def test_fake_all_gather_stacks_every_replica(fake_replica: Any) -> None:
    strategy, fake = fake_replica(0)
    data = {"x": torch.ones(3), "n": 4}
    out = strategy.all_gather(data, group=[[0, 1]])
    assert out["x"].shape == (2, 3) and torch.equal(out["n"], torch.tensor([4, 4]))
    assert fake.calls == [("all_gather", (1, 3), 0, [[0, 1]]), ("all_gather", (1,), 0, [[0, 1]])]
    assert torch.equal(data["x"], torch.ones(3)) and data["n"] == 4  # input unchanged


def test_fake_all_gather_with_gradients_uses_the_differentiable_gather(fake_replica: Any) -> None:
    strategy, fake = fake_replica(1)
    out = strategy.all_gather(torch.ones(2, requires_grad=True), sync_grads=True)
    assert out.shape == (2, 2) and out.requires_grad
    assert fake.calls == [("all_gather", (1, 2), 0, None)]
    with pytest.raises(StrategyError, match="takes no replica groups"):
        strategy.all_gather(torch.ones(2), group=[[0, 1]], sync_grads=True)


@pytest.mark.parametrize(
    ("op", "reduce_type", "scale", "expected"),
    [("mean", "sum", 0.5, 2.0), ("sum", "sum", 1.0, 4.0), ("max", "max", 1.0, 3.0), ("MIN", "min", 1.0, 1.0)],
)
def test_fake_all_reduce_maps_ops(
    fake_replica: Any, op: str, reduce_type: str, scale: float, expected: float
) -> None:
    strategy, fake = fake_replica(0, others=[torch.tensor([1.0])])
    mine = torch.tensor([3.0])
    out = strategy.all_reduce(mine, op=op)
    assert fake.calls == [("all_reduce", reduce_type, scale, None)]
    assert out.item() == expected and mine.item() == 3.0


def test_fake_all_reduce_refuses_unknown_op(fake_replica: Any) -> None:
    strategy, _ = fake_replica(0)
    with pytest.raises(StrategyError, match="accepted: sum, mean"):
        strategy.all_reduce(torch.ones(1), op="median")


def test_fake_broadcast_of_an_object_reaches_the_other_replica(fake_replica: Any) -> None:
    obj = {"epoch": 3, "name": "run-7", "t": torch.arange(4)}
    source, source_fake = fake_replica(0)
    assert source.broadcast(obj, src=0) is not None
    length, data = source_fake.sent  # what replica 0 puts into the two sum-reductions
    assert length.item() == data.numel() > 0
    # replica 1 contributes zeros and receives replica 0's bytes through the same two sums
    receiver, receiver_fake = fake_replica(1, others=[length, data])
    received = receiver.broadcast(None, src=0)
    assert received["epoch"] == 3 and received["name"] == "run-7" and torch.equal(received["t"], obj["t"])
    assert [int(t.abs().sum()) for t in receiver_fake.sent] == [0, 0]


def test_fake_broadcast_of_a_tensor_is_one_sum(fake_replica: Any) -> None:
    strategy, fake = fake_replica(1, others=[torch.tensor([7.0, 8.0])])
    out = strategy.broadcast(torch.tensor([1.0, 1.0]), src=0)
    assert torch.equal(out, torch.tensor([7.0, 8.0]))
    assert torch.equal(fake.sent[0], torch.zeros(2))  # not the source: adds zeros


def test_fake_barrier_and_rank_zero_only_checkpoint_write(fake_replica: Any, tmp_path: Path) -> None:
    strategy, fake = fake_replica(1)
    strategy.barrier("here")
    strategy.save_checkpoint(tmp_path / "ckpt.pt", {"model": nn.Linear(2, 1), "step": 1})
    assert not (tmp_path / "ckpt.pt").exists()  # only global rank 0 writes
    assert fake.calls == [("rendezvous", "here"), ("rendezvous", "lite_save_checkpoint")]
    zero, _ = fake_replica(0)
    zero.save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"step": 1}
