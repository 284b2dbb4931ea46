"""FSDPStrategy (torch FSDP2 on a CPU mesh with gloo) in real processes.

Training is compared with plain PyTorch in one process on the whole global batch (each rank
computes that reference itself before it sets anything up); checkpoints saved with 2 processes
are loaded with 1 and 3.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) needs torch >= 2.6", allow_module_level=True)

from lite_precision import get_precision  # noqa: E402
from lite_strategies import STRATEGIES, CheckpointError, StrategyError  # noqa: E402
from lite_strategies.fsdp import META_FILE, FSDPStrategy  # noqa: E402
from lite_testing import run_processes  # noqa: E402

# torch imports torch._dynamo when the first optimizer is built: pay it once here, before forking.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

SAMPLES = 12  # divisible by 1, 2 and 3 processes
STEPS = 3
TIMEOUT = 120


def cpus(n: int) -> list[torch.device]:
    return [torch.device("cpu")] * n


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(SAMPLES, 4, generator=g), torch.randn(SAMPLES, 3, generator=g)


def shard(strategy: FSDPStrategy, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t[strategy.global_rank :: strategy.world_size] for t in tensors]


def forward(model: nn.Module, precision: Any, x: torch.Tensor) -> torch.Tensor:
    """What LightningLite's set-up module does around the forward."""
    x = precision.convert_input(x)
    with precision.forward_context():
        out = model(x)
    return precision.convert_output(out)  # type: ignore[no-any-return]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y.to(out.dtype))  # 64-true outputs float64; older torch does not mix


def reference(precision_name: str) -> dict[str, torch.Tensor]:
    """Plain PyTorch, one process, the whole batch, the same precision (autocast for the mixed modes)."""
    precision = get_precision(precision_name, "cpu")
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = make_data()
    for _ in range(STEPS):
        loss = mse(forward(model, precision, x), y)
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    return {k: v.detach().float() for k, v in model.state_dict().items()}


# -- construction ---------------------------------------------------------------------------------


def test_fsdp_row_is_for_cpu_and_cuda() -> None:
    spec = STRATEGIES["fsdp"]
    assert spec.accelerators == ("cpu", "cuda") and spec.launcher == "script"
    assert spec.load() is FSDPStrategy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"auto_wrap_policy": "Linear"}, "auto_wrap_policy must be None, a set of module classes"),
        ({"auto_wrap_policy": {int}}, "must hold torch.nn.Module subclasses"),
        ({"auto_wrap_policy": set()}, "must hold torch.nn.Module subclasses"),
        ({"reshard_after_forward": "yes"}, "reshard_after_forward must be True, False or None"),
        ({"cpu_offload": "yes"}, "cpu_offload must be True, False or a"),
        ({"cpu_offload": fsdp.CPUOffloadPolicy(pin_memory=True)}, r"pin_memory=False\) or cpu_offload=True"),
        (
            {"mixed_precision": torch.bfloat16},
            "mixed_precision must be a torch.distributed.fsdp.MixedPrecisionPolicy",
        ),
        ({"state_dict_type": "local"}, "state_dict_type must be 'sharded'"),
        ({"sharding_strategy": "FULL_SHARD"}, r"unknown keyword argument\(s\) \['sharding_strategy'\]"),
    ],
)
def test_invalid_options_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        FSDPStrategy(**kwargs)


@pytest.mark.parametrize(
    ("precision", "param_dtype"),
    [
        ("32-true", None),
        ("64-true", None),
        ("bf16-true", None),  # the parameters themselves are converted
        ("bf16-mixed", torch.bfloat16),
        ("16-mixed", torch.float16),
    ],
)
def test_mixed_precision_policy_follows_the_precision(
    precision: str, param_dtype: torch.dtype | None
) -> None:
    strategy = FSDPStrategy(precision=get_precision(precision, "cpu"))
    policy = strategy.mixed_precision_policy
    if param_dtype is None:
        assert policy is None
    else:
        assert policy is not None
        assert (policy.param_dtype, policy.reduce_dtype) == (param_dtype, torch.float32)


def test_explicit_options_are_kept_and_survive_configured() -> None:
    policy = fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    user = FSDPStrategy(mixed_precision=policy, cpu_offload=True, state_dict_type="full")
    strategy = user.configured(devices=cpus(2), precision=get_precision("bf16-mixed", "cpu"))
    assert isinstance(strategy, FSDPStrategy) and strategy.world_size == 2
    assert strategy.mixed_precision_policy is policy  # the user's policy wins over the precision's
    assert strategy.state_dict_type == "full"
    assert strategy._offload_policy == fsdp.CPUOffloadPolicy(pin_memory=False)


def test_optimizer_that_stepped_or_holds_other_parameters_is_refused_before_sharding() -> None:
    strategy = FSDPStrategy()
    model = make_model()
    stepped = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    stepped.step()
    with pytest.raises(StrategyError, match=r"optimizer 0 \(SGD\) has already stepped"):
        strategy.setup_module_and_optimizers(model, [stepped])
    foreign = torch.optim.Adam([*model.parameters(), nn.Parameter(torch.zeros(5))], lr=0.1)
    with pytest.raises(StrategyError, match=r"holds 1 parameter\(s\) that are not in the module"):
        strategy.setup_module_and_optimizers(model, [foreign])
    with pytest.raises(StrategyError, match=r"optimizer 1 \(_Needy\) cannot be rebuilt.*needs \['scale'\]"):
        strategy.setup_module_and_optimizers(
            model, [torch.optim.SGD(model.parameters()), _Needy(model.parameters(), 2.0)]
        )
    assert not isinstance(model, fsdp.FSDPModule)  # refused before anything was sharded


class _Needy(torch.optim.SGD):
    """An optimizer whose constructor needs an argument that its defaults do not hold."""

    def __init__(self, params: Any, scale: float) -> None:
        super().__init__(params, lr=0.1 * scale)


def test_setup_needs_the_process_group() -> None:
    with pytest.raises(StrategyError, match="call setup_environment"):
        FSDPStrategy().setup_module(make_model())


# -- setup and training in processes ---------------------------------------------------------------


def _rebuild(rank: int, world_size: int) -> dict[str, Any]:
    strategy = FSDPStrategy(devices=cpus(world_size), auto_wrap_policy={nn.Linear})
    strategy.setup_environment()
    model = make_model()
    first, second = model[0], model[2]
    optimizer = torch.optim.SGD(
        [{"params": first.parameters(), "lr": 0.1}, {"params": second.parameters(), "momentum": 0.9}],
        lr=0.5,
        weight_decay=0.01,
    )
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.2)  # has state from its constructor
    adamw = torch.optim.AdamW(model.parameters(), lr=0.3)  # its defaults hold a key its __init__ lacks
    model, (sgd, ada, adamw) = strategy.setup_module_and_optimizers(model, [optimizer, adagrad, adamw])
    params = dict(model.named_parameters())
    return {
        "new": sgd is not optimizer and type(sgd) is torch.optim.SGD and type(ada) is torch.optim.Adagrad,
        "units": [isinstance(m, fsdp.FSDPModule) for m in model.modules()],
        "groups": [{k: g[k] for k in ("lr", "momentum", "weight_decay")} for g in sgd.param_groups],
        "same_params": [p is params[n] for g, names in zip(sgd.param_groups, (("0.weight", "0.bias"), ("2.weight", "2.bias"))) for p, n in zip(g["params"], names)],
        "dtensor": all(type(p).__name__ == "DTensor" for p in model.parameters()),
        "adagrad_state": sorted({type(s["sum"]).__name__ for s in ada.state.values()}),
        "adagrad_keys": all(p in ada.state for p in model.parameters()),
        "adamw": (type(adamw) is torch.optim.AdamW, adamw.param_groups[0]["lr"], adamw.defaults["lr"]),
    }  # fmt: skip


def test_optimizers_are_rebuilt_over_the_sharded_parameters() -> None:
    for result in run_processes(_rebuild, 2, init=False, timeout=TIMEOUT):
        assert result["new"]
        assert result["units"] == [True, True, False, True]  # root, both Linear, not Tanh
        assert result["groups"] == [
            {"lr": 0.1, "momentum": 0, "weight_decay": 0.01},
            {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01},
        ]
        assert result["same_params"] == [True] * 4
        assert result["dtensor"]
        assert result["adagrad_state"] == ["DTensor"] and result["adagrad_keys"]
        assert result["adamw"] == (True, 0.3, 0.3)


def _train(rank: int, world_size: int, precision_name: str, options: dict[str, Any]) -> dict[str, Any]:
    expected = reference(precision_name)  # before any process group or sharding
    precision = get_precision(precision_name, "cpu")
    strategy = FSDPStrategy(devices=cpus(world_size), precision=precision, **options)
    strategy.setup_environment()
    model = make_model()
    model, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.SGD(model.parameters(), lr=0.5)]
    )
    x, y = shard(strategy, *make_data())
    for _ in range(STEPS):
        loss = mse(forward(model, precision, x), y)
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    state = strategy.get_module_state_dict(model)
    return {
        "expected": expected,
        "actual": {k: v.float() for k, v in state.items()},
        "plain": all(type(v) is torch.Tensor for v in state.values()),
        "dtype": str(next(iter(state.values())).dtype),
    }


@pytest.mark.parametrize(
    ("precision", "options", "tolerance", "dtype"),
    [
        ("32-true", {}, 1e-6, "torch.float32"),
        ("32-true", {"auto_wrap_policy": {nn.Linear}, "reshard_after_forward": False}, 1e-6, "torch.float32"),
        (
            "32-true",
            {"auto_wrap_policy": lambda m: isinstance(m, nn.Linear), "cpu_offload": True},
            1e-6,
            "torch.float32",
        ),
        ("64-true", {"auto_wrap_policy": nn.Linear}, 1e-12, "torch.float64"),
        ("bf16-mixed", {"auto_wrap_policy": {nn.Linear}}, 1e-2, "torch.float32"),
        ("16-mixed", {}, 2e-3, "torch.float32"),
        ("bf16-true", {}, 2e-2, "torch.bfloat16"),
    ],
)
def test_two_processes_train_like_one_on_the_global_batch(
    precision: str, options: dict[str, Any], tolerance: float, dtype: str
) -> None:
    for result in run_processes(_train, 2, precision, options, init=False, timeout=TIMEOUT):
        assert result["plain"] and result["dtype"] == dtype  # full tensors, the parameters' own dtype
        moved = max(
            (result["expected"][k] - make_model().state_dict()[k]).abs().max() for k in result["expected"]
        )
        assert moved > 10 * tolerance  # training moved the parameters further than the tolerance
        for key, value in result["expected"].items():
            torch.testing.assert_close(result["actual"][key], value, rtol=0, atol=tolerance)


def _skip_inf(rank: int, world_size: int) -> dict[str, Any]:
    precision = get_precision("16-mixed", "cpu")
    strategy = FSDPStrategy(devices=cpus(world_size), precision=precision)
    strategy.setup_environment()
    model = make_model()
    model, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.SGD(model.parameters(), lr=0.5)]
    )
    before = {k: v.clone() for k, v in strategy.get_module_state_dict(model).items()}
    x, y = shard(strategy, *make_data())
    strategy.backward(mse(forward(model, precision, x), y), model)
    if rank == 1:  # an overflow in one process's shard of the gradients only
        model[0].weight.grad.to_local().view(-1)[0] = math.inf
    strategy.optimizer_step(optimizer)
    after = strategy.get_module_state_dict(model)
    return {
        "unchanged": all(torch.equal(before[k], after[k]) for k in before),
        "scale": precision.scaler.get_scale() if precision.scaler is not None else None,
    }


def test_16_mixed_skips_the_step_on_every_rank_when_one_shard_overflows() -> None:
    results = run_processes(_skip_inf, 2, init=False, timeout=TIMEOUT)
    assert [r["unchanged"] for r in results] == [True, True]
    assert [r["scale"] for r in results] == [32768.0, 32768.0]  # halved everywhere


def _no_sync(rank: int, world_size: int) -> dict[str, Any]:
    torch.manual_seed(0)
    plain = nn.Linear(4, 2, bias=False)
    batches = [torch.randn(world_size, 3, 4) for _ in range(2)]  # [micro][rank]
    expected = torch.zeros_like(plain.weight)
    for micro in batches:  # what DDP gives: the mean over ranks of the summed micro-batch gradients
        for r in range(world_size):
            plain.zero_grad()
            plain(micro[r]).pow(2).sum().backward()
            expected += plain.weight.grad / world_size
    strategy = FSDPStrategy(devices=cpus(world_size))
    strategy.setup_environment()
    torch.manual_seed(0)
    model = strategy.setup_module(nn.Linear(4, 2, bias=False))
    with strategy.no_backward_sync(model):
        strategy.backward(model(batches[0][rank]).pow(2).sum(), model)
    inside = model.weight.grad
    strategy.backward(model(batches[1][rank]).pow(2).sum(), model)
    try:
        strategy.no_backward_sync(nn.Linear(1, 1))
        refused = ""
    except StrategyError as exc:
        refused = str(exc)
    return {
        "inside": inside,
        "grad": model.weight.grad.full_tensor(),
        "expected": expected,
        "refused": refused,
    }


def test_no_backward_sync_accumulates_locally_then_reduces_once() -> None:
    for result in run_processes(_no_sync, 2, init=False, timeout=TIMEOUT):
        assert result["inside"] is None  # nothing reduced into the sharded gradient inside the context
        torch.testing.assert_close(result["grad"], result["expected"])
        assert "needs the module returned by setup_module (an FSDPModule)" in result["refused"]


# -- checkpoints ------------------------------------------------------------------------------------


def _fit(
    strategy: FSDPStrategy, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int
) -> list[float]:
    """``steps`` Adam steps on this rank's share of the data; returns the global (mean) losses."""
    x, y = shard(strategy, *make_data())
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(strategy.all_reduce(loss.detach(), op="mean").item())
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    return losses


def _setup(world_size: int, **kwargs: Any) -> tuple[FSDPStrategy, nn.Module, torch.optim.Optimizer]:
    strategy = FSDPStrategy(devices=cpus(world_size), auto_wrap_policy={nn.Linear}, **kwargs)
    strategy.setup_environment()
    model = make_model()
    model, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.Adam(model.parameters(), lr=0.05)]
    )
    return strategy, model, optimizer


def _full(strategy: FSDPStrategy, model: nn.Module) -> dict[str, torch.Tensor]:
    # cloned: in one process the full tensors are the parameters themselves (no gather needed)
    return {k: v.clone() for k, v in strategy.get_module_state_dict(model).items()}


def _save(rank: int, world_size: int, path: str, state_dict_type: str) -> dict[str, Any]:
    strategy, model, optimizer = _setup(world_size, state_dict_type=state_dict_type)
    _fit(strategy, model, optimizer, 2)
    strategy.save_checkpoint(
        path, {"model": model, "optimizer": optimizer, "step": 2, "extra": {"note": "hi"}}
    )
    saved = _full(strategy, model)
    next_losses = _fit(strategy, model, optimizer, 2)
    return {"saved": saved, "next_losses": next_losses, "final": _full(strategy, model)}


def _resume(rank: int, world_size: int, path: str) -> dict[str, Any]:
    strategy, model, optimizer = _setup(world_size)
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
    rest = strategy.load_checkpoint(path, state)
    loaded = _full(strategy, model)
    next_losses = _fit(strategy, model, optimizer, 2)
    return {
        "step": state["step"],
        "rest": rest,
        "loaded": loaded,
        "next_losses": next_losses,
        "final": _full(strategy, model),
        "whole": strategy.load_checkpoint(path),
    }


def _assert_resumed(saved: dict[str, Any], resumed: list[dict[str, Any]]) -> None:
    for result in resumed:
        assert result["step"] == 2 and result["rest"] == {"extra": {"note": "hi"}}
        for key, value in saved["saved"].items():
            torch.testing.assert_close(result["loaded"][key], value, rtol=0, atol=0)
        # the same next losses and parameters as not stopping (Adam's state came back too)
        assert result["next_losses"] == pytest.approx(saved["next_losses"], rel=1e-5, abs=1e-7)
        for key, value in saved["final"].items():
            torch.testing.assert_close(result["final"][key], value, rtol=1e-5, atol=1e-6)
        whole = result["whole"]
        assert whole["step"] == 2 and whole["extra"] == {"note": "hi"}
        for key, value in saved["saved"].items():
            torch.testing.assert_close(whole["model"][key], value, rtol=0, atol=0)
        assert sorted(whole["optimizer"]["state"]) == sorted(saved["saved"])  # full, keyed by names


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("fsdp") / "ckpt"
    results = run_processes(_save, 2, str(path), "sharded", init=False, timeout=TIMEOUT)
    assert results[0]["next_losses"] == results[1]["next_losses"]
    return path, results[0]


def test_sharded_checkpoint_is_a_directory_of_shards(sharded_checkpoint: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sharded_checkpoint
    assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", META_FILE]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_checkpoint_resumes_on_another_number_of_processes(
    sharded_checkpoint: tuple[Path, dict[str, Any]], world_size: int
) -> None:
    path, saved = sharded_checkpoint
    _assert_resumed(saved, run_processes(_resume, world_size, str(path), init=False, timeout=TIMEOUT))


def test_full_checkpoint_is_one_file_that_loads_into_a_sharded_model(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    saved = run_processes(_save, 2, str(path), "full", init=False, timeout=TIMEOUT)[0]
    assert path.is_file()
    _assert_resumed(saved, run_processes(_resume, 3, str(path), init=False, timeout=TIMEOUT))


def _load_plain(rank: int, world_size: int, path: str) -> dict[str, Any]:
    strategy, model, optimizer = _setup(world_size)
    strategy.load_checkpoint(path, {"model": model, "optimizer": optimizer})
    state = optimizer.state[model[0].weight]
    return {
        "model": strategy.get_module_state_dict(model),
        "step": float(state["step"]),
        "exp_avg": strategy.get_optimizer_state_dict(optimizer)["state"]["0.weight"]["exp_avg"],
    }


def test_plain_state_dicts_load_into_a_sharded_model(tmp_path: Path) -> None:
    # What DDP or one process saves: model.state_dict() and an index-keyed optimizer.state_dict().
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = make_data()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    path = tmp_path / "plain.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    for result in run_processes(_load_plain, 2, str(path), init=False, timeout=TIMEOUT):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(result["model"][key], value, rtol=0, atol=0)
        assert result["step"] == 1.0
        torch.testing.assert_close(result["exp_avg"], optimizer.state[model[0].weight]["exp_avg"])


def _bad_paths(rank: int, world_size: int, file: str, empty_dir: str) -> list[str]:
    strategy, model, _ = _setup(world_size)
    errors = []
    for call in (
        lambda: strategy.save_checkpoint(file, {"model": model}),
        lambda: strategy.load_checkpoint(empty_dir, {"model": model}),
    ):
        try:
            call()
            errors.append("")
        except CheckpointError as exc:
            errors.append(str(exc))
    return errors


def test_checkpoint_path_errors(tmp_path: Path) -> None:
    (tmp_path / "file.pt").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    errors = run_processes(_bad_paths, 1, str(tmp_path / "file.pt"), str(tmp_path / "empty"), init=False)[0]
    assert "is a file, but FSDP's sharded checkpoint is a directory" in errors[0]
    assert "without torch.distributed.checkpoint's '.metadata' file" in errors[1]
