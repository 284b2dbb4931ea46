"""The 'ddp_sharded' strategies on fairscale (OSS + ShardedDataParallel) in real gloo processes.

The reference is always computed without fairscale: torch DDP on the same global batch, or one
process on the whole batch. Ranks of a sharded run always agree with each other (the owner of
each parameter broadcasts it), so only such a comparison catches wrong gradients.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fairscale")

import torch
from fairscale.nn.data_parallel import ShardedDataParallel
from fairscale.optim import OSS
from torch import nn
from torch.nn import functional as F

from lite_precision import get_precision
from lite_strategies import STRATEGIES, DDPStrategy, ScriptLauncher, SpawnLauncher, StrategyError
from lite_strategies._sharded import SHARDED_DDP_KWARGS, DDPShardedSpawnStrategy, DDPShardedStrategy
from lite_testing import run_processes

CPU2 = [torch.device("cpu")] * 2
STEPS = 5
TIMEOUT = 120
# Exact in practice (the same float32 operations in the same order); a hair of slack for the
# order of the gradient reduction.
TOL = {"rtol": 1e-6, "atol": 1e-7}


def make_model() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


def make_optimizer(model: nn.Module, kind: str = "sgd") -> torch.optim.Optimizer:
    # Two groups with different settings: the OSS must keep each group's own.
    first, *rest = list(model.children())
    groups: list[dict[str, Any]] = [
        {"params": first.parameters(), "lr": 0.05},
        {"params": [p for m in rest for p in m.parameters()]},
    ]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=0.02)
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)


def local_batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch(step)
    return x[rank::world_size], y[rank::world_size]


def params_of(module: nn.Module) -> list[torch.Tensor]:
    inner = (
        module.module
        if isinstance(module, (ShardedDataParallel, nn.parallel.DistributedDataParallel))
        else module
    )
    return [p.detach().clone() for p in inner.parameters()]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL)


def max_difference(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max((a - e).abs().max().item() for a, e in zip(actual, expected))


# ---------------------------------------------------------------------------------- in one process


def test_passed_through_keywords_are_those_of_sharded_data_parallel() -> None:
    parameters = inspect.signature(ShardedDataParallel.__init__).parameters
    assert set(SHARDED_DDP_KWARGS) == set(parameters) - {
        "self",
        "module",
        "sharded_optimizer",
        "process_group",
    }


def test_registry_rows_load_one_class_and_build() -> None:
    # Changed by issue 14: both rows are DDPShardedStrategy (ddp_sharded_spawn differs in launcher kind).
    for name, alias, launcher in [
        ("ddp_sharded", DDPShardedStrategy, ScriptLauncher),
        ("ddp_sharded_spawn", DDPShardedSpawnStrategy, SpawnLauncher),
    ]:
        spec = STRATEGIES[name]
        assert spec.accelerators == ("cpu", "cuda")
        assert spec.load() is DDPShardedStrategy
        for strategy in (
            spec.build(devices=CPU2, reduce_buffer_size=0),
            alias(devices=CPU2, reduce_buffer_size=0),
        ):
            assert isinstance(strategy.launcher, launcher)  # touches no process group
            assert strategy.world_size == 2 and strategy.strategy_name == name


def test_unknown_keyword_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(
        StrategyError, match=r"unknown keyword argument\(s\) \['bucket_cap_mb'\].*reduce_buffer_size"
    ):
        DDPShardedStrategy(devices=CPU2, bucket_cap_mb=25)


def test_float16_mixed_on_cpu_is_refused_at_construction() -> None:
    with pytest.raises(StrategyError, match=r"'16-mixed' on 'cpu'.*ShardedGradScaler.*bf16-mixed"):
        DDPShardedStrategy(devices=CPU2, precision=get_precision("16-mixed", "cpu"))
    DDPShardedStrategy(devices=CPU2, precision=get_precision("bf16-mixed", "cpu"))  # fine


def test_strategy_objects_pickle_for_spawn() -> None:
    import pickle

    strategy = DDPShardedSpawnStrategy(devices=CPU2, broadcast_buffers=False)
    clone = pickle.loads(pickle.dumps(strategy))
    assert clone._backend_kwargs == {"broadcast_buffers": False}


# ---------------------------------------------------------------------------------- in real processes


def _run(
    model: nn.Module, optimizer: Any, rank: int, world_size: int, zero: str = "optimizer"
) -> list[torch.Tensor]:
    """STEPS steps on this rank's share of each global batch, zeroing gradients as ``zero`` says."""
    for step in range(STEPS):
        if zero == "optimizer":
            optimizer.zero_grad()  # torch 2: set_to_none=True
        elif zero == "in_place":
            optimizer.zero_grad(set_to_none=False)
        elif zero == "drop":
            for p in model.parameters():
                p.grad = None
        x, y = local_batch(step, rank, world_size)
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    return params_of(model)


def _training(rank: int, world_size: int) -> dict[str, Any]:
    strategy = DDPShardedStrategy(devices=CPU2)
    strategy.setup_environment()
    out: dict[str, Any] = {}
    try:
        for kind in ("sgd", "adam"):
            ddp_model = nn.parallel.DistributedDataParallel(make_model())
            out[f"ddp/{kind}"] = _run(ddp_model, make_optimizer(ddp_model.module, kind), rank, world_size)

            model, (optimizer,) = _setup(strategy, kind)
            out[f"sharded/{kind}"] = _run(model, optimizer, rank, world_size)

        # gradients dropped behind the optimizer's back (like model.zero_grad() on a wrapper)
        model, (optimizer,) = _setup(strategy, "sgd")
        out["dropped"] = _run(model, optimizer, rank, world_size, zero="drop")

        # fairscale as it comes: the optimizer's zero_grad(set_to_none=True) detaches the buckets
        raw_model = make_model()
        raw_optimizer = OSS(
            make_optimizer(raw_model).param_groups, optim=torch.optim.SGD, lr=0.1, momentum=0.9
        )
        raw = ShardedDataParallel(raw_model, raw_optimizer)
        out["raw"] = _run(raw, raw_optimizer, rank, world_size)
        raw_model = make_model()
        raw_optimizer = OSS(
            make_optimizer(raw_model).param_groups, optim=torch.optim.SGD, lr=0.1, momentum=0.9
        )
        raw = ShardedDataParallel(raw_model, raw_optimizer)
        out["raw/set_to_none=False"] = _run(raw, raw_optimizer, rank, world_size, zero="in_place")
        out["types"] = (type(model).__mro__[1].__name__, type(optimizer).__mro__[1].__name__)
        out["keys"] = list(strategy.get_module_state_dict(model))

        # optimizer state from before setup (one step on the whole batch, the same on every rank) is kept
        for name, make in [("ddp", nn.parallel.DistributedDataParallel), ("sharded", None)]:
            plain = make_model()
            plain_optimizer = make_optimizer(plain)
            F.mse_loss(plain(global_batch(-1)[0]), global_batch(-1)[1]).backward()
            plain_optimizer.step()
            if make is None:
                model, (optimizer,) = strategy.setup_module_and_optimizers(plain, [plain_optimizer])
            else:
                model, optimizer = make(plain), plain_optimizer
            out[f"prestate/{name}"] = _run(model, optimizer, rank, world_size)

        # gradient accumulation: the first half of each batch under no_backward_sync
        ddp_model = nn.parallel.DistributedDataParallel(make_model())
        out["accumulate/ddp"] = _accumulate(
            ddp_model, make_optimizer(ddp_model.module), ddp_model.no_sync, rank
        )
        model, (optimizer,) = _setup(strategy, "sgd")
        out["accumulate/sharded"] = _accumulate(
            model, optimizer, lambda: strategy.no_backward_sync(model), rank
        )

        out["bf16"] = _bf16(rank, world_size)
        out["errors"] = _errors(strategy)
        return out
    finally:
        strategy.teardown()


def _accumulate(model: nn.Module, optimizer: Any, no_sync: Any, rank: int) -> list[torch.Tensor]:
    for step in range(STEPS):
        x, y = local_batch(step, rank, 2)
        with no_sync():
            (F.mse_loss(model(x[:2]), y[:2]) / 2).backward()
        (F.mse_loss(model(x[2:]), y[2:]) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    return params_of(model)


def _bf16(rank: int, world_size: int) -> dict[str, list[torch.Tensor]]:
    out = {}
    for name, cls in [("ddp", DDPStrategy), ("sharded", DDPShardedStrategy)]:
        strategy = cls(devices=CPU2, precision=get_precision("bf16-mixed", "cpu"))
        strategy.setup_environment()  # the process group exists: joins it
        model = make_model()
        model, (optimizer,) = strategy.setup_module_and_optimizers(model, [make_optimizer(model)])
        for step in range(STEPS):
            x, y = local_batch(step, rank, world_size)
            with strategy.precision.forward_context():
                loss = F.mse_loss(model(x).float(), y)
            strategy.backward(loss, model)
            strategy.optimizer_step(optimizer)
            optimizer.zero_grad()
        out[name] = params_of(model)
    return out


def _errors(strategy: DDPShardedStrategy) -> dict[str, str]:
    errors = {}
    model = make_model()
    attempts = {
        "setup_module": lambda: strategy.setup_module(model),
        "no_optimizer": lambda: strategy.setup_module_and_optimizers(model, []),
        "already_oss": lambda: strategy.setup_module_and_optimizers(
            model, [OSS(model.parameters(), optim=torch.optim.SGD, lr=0.1)]
        ),
        "no_sync_plain": lambda: strategy.no_backward_sync(model),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except StrategyError as exc:
            errors[name] = str(exc)
    return errors


def _setup(strategy: DDPShardedStrategy, kind: str) -> tuple[nn.Module, list[Any]]:
    model = make_model()
    return strategy.setup_module_and_optimizers(model, [make_optimizer(model, kind)])


@pytest.fixture(scope="module")
def training() -> list[dict[str, Any]]:
    return run_processes(_training, 2, init=False, timeout=TIMEOUT)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_parameters_equal_ddp_on_the_same_global_batch(training: list[dict[str, Any]], kind: str) -> None:
    for result in training:
        assert_all_close(result[f"sharded/{kind}"], result[f"ddp/{kind}"])
        assert max_difference(result[f"sharded/{kind}"], params_of(make_model())) > 1e-2  # it did train


def test_gradients_dropped_by_hand_are_reattached(training: list[dict[str, Any]]) -> None:
    for result in training:
        assert_all_close(result["dropped"], result["ddp/sgd"])


def test_raw_fairscale_zero_grad_gives_wrong_parameters_that_ranks_agree_on(
    training: list[dict[str, Any]],
) -> None:
    # The trap this strategy closes, shown on fairscale itself: wrong, yet the same on every rank.
    for result in training:
        assert max_difference(result["raw"], result["ddp/sgd"]) > 1e-3
        assert_all_close(result["raw/set_to_none=False"], result["ddp/sgd"])
    assert_all_close(training[0]["raw"], training[1]["raw"])


def test_returns_sharded_wrappers_with_original_state_dict_keys(training: list[dict[str, Any]]) -> None:
    assert training[0]["types"] == ("ShardedDataParallel", "OSS")
    assert training[0]["keys"] == list(make_model().state_dict())


def test_optimizer_state_from_before_setup_is_kept(training: list[dict[str, Any]]) -> None:
    for result in training:
        assert_all_close(result["prestate/sharded"], result["prestate/ddp"])
        assert max_difference(result["prestate/ddp"], result["ddp/sgd"]) > 1e-3  # the pre-step mattered


def test_no_backward_sync_accumulates_like_ddp(training: list[dict[str, Any]]) -> None:
    for result in training:
        assert_all_close(result["accumulate/sharded"], result["accumulate/ddp"])


def test_bf16_mixed_on_cpu_matches_ddp_with_the_same_precision(training: list[dict[str, Any]]) -> None:
    for result in training:
        for a, e in zip(result["bf16"]["sharded"], result["bf16"]["ddp"]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (
            "setup_module",
            r"cannot set a module up without its optimizer\(s\).*lite.setup\(model, optimizer\)",
        ),
        ("no_optimizer", r"together with its optimizer\(s\)"),
        ("already_oss", r"already a fairscale OSS; pass the plain torch optimizer"),
        ("no_sync_plain", r"no_backward_sync needs the module returned by setup_module_and_optimizers"),
    ],
)
def test_misuse_is_refused_with_the_fix(training: list[dict[str, Any]], attempt: str, message: str) -> None:
    import re

    assert re.search(message, training[0]["errors"][attempt]), training[0]["errors"].get(attempt)


# ---------------------------------------------------------------------------------- checkpoints


def _full_batch_steps(model: nn.Module, optimizer: Any, steps: range) -> list[float]:
    """Steps on the whole global batch in every process: the result does not depend on the world size."""
    losses = []
    for step in steps:
        optimizer.zero_grad()
        x, y = global_batch(step)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _save(rank: int, world_size: int, path: str) -> dict[str, Any]:
    strategy = DDPShardedStrategy(devices=CPU2)
    strategy.setup_environment()
    try:
        model, (optimizer,) = _setup(strategy, "sgd")
        _full_batch_steps(model, optimizer, range(2))
        strategy.save_checkpoint(path, {"model": model, "optimizer": optimizer, "step": 2})
        losses = _full_batch_steps(model, optimizer, range(2, 4))
        # the same without fairscale, in this process alone
        plain = make_model()
        plain_optimizer = make_optimizer(plain)
        _full_batch_steps(plain, plain_optimizer, range(2))
        plain_state = copy.deepcopy(plain_optimizer.state_dict())  # the buffers change in place later
        plain_losses = _full_batch_steps(plain, plain_optimizer, range(2, 4))
        return {
            "losses": losses,
            "params": params_of(model),
            "plain_losses": plain_losses,
            "plain_params": params_of(plain),
            "plain_state": plain_state,
        }
    finally:
        strategy.teardown()


def _resume(rank: int, world_size: int, path: str) -> dict[str, Any]:
    strategy = DDPShardedStrategy(devices=[torch.device("cpu")] * world_size)
    strategy.setup_environment()
    try:
        model, (optimizer,) = _setup(strategy, "sgd")
        state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
        rest = strategy.load_checkpoint(path, state)
        losses = _full_batch_steps(model, optimizer, range(state["step"], 4))
        return {"rest": rest, "losses": losses, "params": params_of(model)}
    finally:
        strategy.teardown()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("sharded") / "checkpoint.pt"
    return path, run_processes(_save, 2, str(path), init=False, timeout=TIMEOUT)


def test_checkpoint_holds_the_full_plain_optimizer_state(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    path, results = saved
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 2
    assert list(checkpoint["model"]) == list(make_model().state_dict())
    expected = results[0]["plain_state"]
    assert sorted(checkpoint["optimizer"]["state"]) == sorted(expected["state"]) == list(range(6))
    for index, entry in expected["state"].items():
        torch.testing.assert_close(
            checkpoint["optimizer"]["state"][index]["momentum_buffer"], entry["momentum_buffer"]
        )
    assert [g["lr"] for g in checkpoint["optimizer"]["param_groups"]] == [0.05, 0.1]
    # ... which a plain torch optimizer loads as it is
    plain = make_model()
    make_optimizer(plain).load_state_dict(checkpoint["optimizer"])


def test_sharded_training_matches_one_plain_process(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    _, results = saved
    for result in results:
        assert_all_close(result["params"], result["plain_params"])
        assert result["losses"] == pytest.approx(result["plain_losses"], rel=1e-6)


@pytest.mark.parametrize("world_size", [1, 3])
def test_resume_on_another_number_of_processes_gives_the_same_next_losses(
    saved: tuple[Path, list[dict[str, Any]]], world_size: int
) -> None:
    path, results = saved
    resumed = run_processes(_resume, world_size, str(path), init=False, timeout=TIMEOUT)
    for result in resumed:
        assert result["rest"] == {}
        assert result["losses"] == pytest.approx(results[0]["losses"], rel=1e-6)
        assert_all_close(result["params"], results[0]["params"])


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_float16_mixed_gets_a_shard_aware_scaler_and_a_custom_one_is_refused() -> None:
    # What setup_environment does on CUDA, run on CPU (only the swap itself: no step is taken).
    from fairscale.optim.grad_scaler import ShardedGradScaler

    from lite_precision import MixedPrecision

    strategy = DDPShardedStrategy(devices=CPU2)
    strategy._precision = MixedPrecision("cpu")  # bypasses the CPU refusal, for this check only
    strategy._use_sharded_scaler()
    assert isinstance(strategy.precision.scaler, ShardedGradScaler)

    class CustomScaler(torch.amp.GradScaler):
        pass

    strategy._precision = MixedPrecision("cpu", scaler=CustomScaler("cpu"))
    with pytest.raises(StrategyError, match=r"needs a shard-aware loss scaler.*CustomScaler"):
        strategy._use_sharded_scaler()
