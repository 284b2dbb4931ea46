"""Building strategies: validation at construction, nothing touched before setup."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch

import lite_collectives
import lite_strategies
from lite_precision import get_precision
from lite_strategies import (
    DataParallelStrategy,
    DDPForkStrategy,
    DDPSpawnStrategy,
    DDPStrategy,
    SingleDeviceStrategy,
    StrategyError,
)

CPU2 = [torch.device("cpu")] * 2


def test_ddp_passes_known_kwargs_and_refuses_unknown_ones_with_the_list() -> None:
    DDPStrategy(devices=CPU2, find_unused_parameters=True, static_graph=False, process_group_backend="gloo")
    with pytest.raises(
        StrategyError,
        match=r"unknown keyword argument\(s\) \['find_unused_params'\].*find_unused_parameters.*static_graph",
    ):
        DDPStrategy(find_unused_params=True)


def test_single_process_strategies_take_no_backend_kwargs() -> None:
    with pytest.raises(StrategyError, match="accepted: none"):
        SingleDeviceStrategy(find_unused_parameters=True)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (DataParallelStrategy, {"accelerator": "cpu"}, "'dp' .* needs CUDA devices, got accelerator='cpu'"),
        (DataParallelStrategy, {"devices": CPU2}, "'dp' .* needs CUDA devices.*'cpu', 'cpu'"),
        (SingleDeviceStrategy, {"devices": CPU2}, "at most 1 device"),
        (SingleDeviceStrategy, {"num_nodes": 2}, "cannot use num_nodes=2"),
        (DDPStrategy, {"num_nodes": 0}, "num_nodes must be an integer >= 1"),
        (DDPStrategy, {"devices": "cpu"}, "non-empty sequence of torch.device"),
        (DDPStrategy, {"devices": []}, "non-empty sequence"),
        (DDPStrategy, {"devices": [torch.device("cuda", 0)]}, "do not belong to accelerator 'cpu'"),
        (DDPStrategy, {"accelerator": "xla"}, "cannot run on accelerator 'xla'"),
        (
            DDPStrategy,
            {"timeout": -1},
            r"timeout=-1: must be a positive number .*DDPStrategy\(timeout=3600\)",
        ),
        (DDPStrategy, {"timeout": float("inf")}, "timeout=inf: must be a positive"),
        (DDPStrategy, {"timeout": "1h"}, "timeout='1h': must be a positive"),
        (DDPStrategy, {"accelerator": "quantum"}, "quantum"),
    ],
)
def test_bad_arguments_fail_at_construction(cls: type, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_precision_for_another_device_type_is_refused() -> None:
    with pytest.raises(StrategyError, match="built for device type 'cpu'"):
        SingleDeviceStrategy(accelerator="cuda", precision=get_precision("32-true", "cpu"))


def test_construction_touches_no_process_group_and_pickles() -> None:
    strategy = DDPSpawnStrategy(devices=CPU2)
    assert strategy.launcher is not None
    assert not lite_collectives.is_initialized()
    clone = pickle.loads(pickle.dumps(strategy))  # what spawn sends to each process
    assert clone.devices == strategy.devices and clone._launcher is None


def test_single_device_defaults() -> None:
    strategy = SingleDeviceStrategy()
    assert strategy.launcher is None
    assert strategy.root_device == torch.device("cpu")
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (
        1,
        0,
        0,
        0,
    )
    assert strategy.is_global_zero and not strategy.is_distributed
    assert strategy.distributed_sampler_kwargs is None
    assert strategy.precision.name == "32-true"
    x = torch.arange(4.0)
    assert strategy.all_reduce(x) is x or torch.equal(strategy.all_reduce(x), x)
    assert strategy.broadcast({"a": 1}) == {"a": 1}
    strategy.barrier()
    with strategy.no_backward_sync(torch.nn.Linear(1, 1)):
        pass


def test_ddp_properties_before_launch() -> None:
    strategy = DDPStrategy(devices=CPU2, num_nodes=3)
    assert strategy.world_size == 6 and strategy.num_processes == 2
    assert strategy.is_distributed
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 6, "rank": 0}
    assert isinstance(strategy.launcher, lite_strategies.ScriptLauncher)
    assert not strategy.launcher.is_interactive_compatible
    assert isinstance(DDPSpawnStrategy().launcher, lite_strategies.SpawnLauncher)
    fork = DDPForkStrategy().launcher
    assert isinstance(fork, lite_strategies.SpawnLauncher) and fork.is_interactive_compatible
    assert isinstance(fork, lite_strategies.Launcher)


def test_spawn_launcher_refuses_an_unknown_start_method() -> None:
    with pytest.raises(StrategyError, match="start_method 'forkserverx'"):
        lite_strategies.SpawnLauncher(DDPStrategy(), start_method="forkserverx")


def test_single_device_setup_converts_precision_and_keeps_optimizer_params() -> None:
    strategy = SingleDeviceStrategy(precision=get_precision("64-true", "cpu"))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, (optimizer,) = strategy.setup_module_and_optimizers(model, [optimizer])
    assert model.weight.dtype == torch.float64
    assert optimizer.param_groups[0]["params"][0] is model.weight


@pytest.mark.parametrize(
    ("precision", "plain"), [("32-true", True), ("bf16-mixed", True), ("64-true", True), ("16-mixed", False)]
)
def test_plain_backward_and_step_follows_the_precision(precision: str, plain: bool) -> None:
    assert SingleDeviceStrategy(precision=get_precision(precision)).plain_backward_and_step is plain
    assert DDPStrategy(precision=get_precision(precision)).plain_backward_and_step is plain


def test_a_strategy_that_overrides_the_step_is_not_plain() -> None:
    class Counting(SingleDeviceStrategy):
        def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
            return super().optimizer_step(optimizer, **kwargs)

    assert not Counting().plain_backward_and_step


def test_deepspeed_options_are_one_dataclass_checked_with_the_field_list() -> None:
    # Pure: building the options imports no deepspeed.
    import dataclasses

    from lite_strategies.deepspeed import DeepSpeedOptions

    names = DeepSpeedOptions.names()
    assert len(names) == 21 and names[:2] == ("stage", "config")
    options = DeepSpeedOptions.from_kwargs({"stage": 3, "offload_optimizer": True})
    assert (options.stage, options.offload_optimizer, options.logging_batch_size_per_gpu) == (3, True, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.stage = 1  # type: ignore[misc]
    with pytest.raises(
        StrategyError, match=r"unknown DeepSpeed option\(s\) \['stages'\]; the options are: stage, config, "
    ):
        DeepSpeedOptions.from_kwargs({"stages": 3})
    with pytest.raises(
        StrategyError, match=r"option overlap_comm must be bool or None, got 'yes'; the options are: stage"
    ):
        DeepSpeedOptions(overlap_comm="yes")  # type: ignore[arg-type]
    with pytest.raises(StrategyError, match="stage must be one of 0, 1, 2, 3"):
        DeepSpeedOptions(stage=True)


def test_launcher_kinds_map_to_their_launchers() -> None:
    from lite_strategies.launchers import LAUNCHER_KINDS, XLALauncher, make_launcher

    strategy = DDPStrategy(devices=[torch.device("cpu")] * 2)
    assert LAUNCHER_KINDS == ("script", "spawn", "fork", "xla")
    assert isinstance(make_launcher("script", strategy), lite_strategies.ScriptLauncher)
    for kind in ("spawn", "fork"):
        launcher = make_launcher(kind, strategy)
        assert isinstance(launcher, lite_strategies.SpawnLauncher) and launcher.start_method == kind
    assert isinstance(make_launcher("xla", strategy, start_method="fork"), XLALauncher)
    with pytest.raises(
        StrategyError, match=r"launcher kind 'forkserver' is not one of \['script', 'spawn', 'fork', 'xla'\]"
    ):
        make_launcher("forkserver", strategy)
    assert DDPStrategy().launcher_kind == "script" and DDPForkStrategy().launcher_kind == "fork"
