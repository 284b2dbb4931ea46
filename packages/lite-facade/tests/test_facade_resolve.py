"""The flag resolver as a table: flags + inventory -> plan, or one error naming every problem."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lite_collectives import ClusterEnvironment, LightningEnvironment, TorchElasticEnvironment
from lite_facade import Inventory, LiteConfigurationError, resolve_plan

CPU_ONLY = Inventory(device_counts={"cpu": 1}, installed=frozenset(), environment=LightningEnvironment())
FOUR_GPUS = Inventory(
    device_counts={"cpu": 1, "cuda": 4}, installed=frozenset(), environment=LightningEnvironment()
)


def resolve(inventory: Inventory = CPU_ONLY, **flags: Any) -> Any:
    return resolve_plan(inventory=inventory, **flags)


@pytest.mark.parametrize(
    ("flags", "inventory", "expected"),
    [
        ({}, CPU_ONLY, ("cpu", 1, "single_device", "32-true")),
        ({"devices": 0}, CPU_ONLY, ("cpu", 1, "single_device", "32-true")),
        ({"accelerator": "cpu", "devices": 2}, CPU_ONLY, ("cpu", 2, "ddp_spawn", "32-true")),
        ({"accelerator": "cpu", "devices": "3"}, CPU_ONLY, ("cpu", 3, "ddp_spawn", "32-true")),
        ({"accelerator": "cpu", "devices": 2, "strategy": "DDP"}, CPU_ONLY, ("cpu", 2, "ddp", "32-true")),
        (
            {"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork"},
            CPU_ONLY,
            ("cpu", 2, "ddp_fork", "32-true"),
        ),
        ({"precision": 16}, CPU_ONLY, ("cpu", 1, "single_device", "16-mixed")),
        ({"precision": "bf16"}, CPU_ONLY, ("cpu", 1, "single_device", "bf16-mixed")),
        ({"precision": 64}, CPU_ONLY, ("cpu", 1, "single_device", "64-true")),
        ({"precision": "bf16-true"}, CPU_ONLY, ("cpu", 1, "single_device", "bf16-true")),
        ({"accelerator": "auto"}, CPU_ONLY, ("cpu", 1, "single_device", "32-true")),
        ({"accelerator": "auto", "devices": 2}, FOUR_GPUS, ("cuda", 2, "ddp_spawn", "32-true")),
        ({"gpus": 2}, FOUR_GPUS, ("cuda", 2, "ddp_spawn", "32-true")),
        ({"gpus": "1, 3", "strategy": "ddp"}, FOUR_GPUS, ("cuda", 2, "ddp", "32-true")),
        ({"devices": -1, "accelerator": "gpu", "strategy": "dp"}, FOUR_GPUS, ("cuda", 4, "dp", "32-true")),
        ({"devices": [1], "accelerator": "cuda"}, FOUR_GPUS, ("cuda", 1, "single_device", "32-true")),
        ({"accelerator": "cpu", "num_nodes": 2}, CPU_ONLY, ("cpu", 1, "ddp_spawn", "32-true")),
    ],
)
def test_flags_resolve_to_plan(
    flags: dict[str, Any], inventory: Inventory, expected: tuple[Any, ...]
) -> None:
    plan = resolve(inventory, **flags)
    assert (plan.accelerator, plan.num_devices, plan.strategy, plan.precision) == expected
    assert plan.world_size == plan.num_devices * plan.num_nodes
    assert plan.warnings == ()


def test_selected_gpu_indices_are_kept() -> None:
    plan = resolve(FOUR_GPUS, devices="1, 3", accelerator="gpu", strategy="ddp")
    assert plan.devices == (torch.device("cuda", 1), torch.device("cuda", 3))


@pytest.mark.parametrize(
    ("flags", "inventory", "needles"),
    [
        ({"accelerator": "gpu"}, CPU_ONLY, ["accelerator='gpu'", "cpu"]),
        ({"gpus": 2}, CPU_ONLY, ["gpus=2"]),
        ({"tpu_cores": 8}, CPU_ONLY, ["tpu_cores=8"]),
        ({"accelerator": "ipu"}, CPU_ONLY, ["'ipu'", "cpu", "cuda"]),
        ({"accelerator": "cpu", "devices": "two"}, CPU_ONLY, ["'two'"]),
        ({"gpus": 8}, FOUR_GPUS, ["8"]),
        ({"strategy": "horovod"}, CPU_ONLY, ["'horovod'", "ddp"]),
        ({"precision": "fp8"}, CPU_ONLY, ["'fp8'", "bf16-mixed"]),
        ({"num_nodes": 0}, CPU_ONLY, ["num_nodes=0", ">= 1"]),
        ({"num_nodes": "2"}, CPU_ONLY, ["num_nodes='2'"]),
        (
            {"strategy": "deepspeed"},
            CPU_ONLY,
            ["pip install 'deepspeed>=0.14'", "lite-strategies[deepspeed]"],
        ),
        (
            {"strategy": "ddp_sharded"},
            CPU_ONLY,
            ["pip install 'fairscale>=0.4.13'", "lite-strategies[fairscale]"],
        ),
        (
            {"strategy": "single_device", "accelerator": "cpu", "devices": 2},
            CPU_ONLY,
            ["single_device", "devices=1"],
        ),
        ({"strategy": "dp", "accelerator": "cuda", "devices": 2, "num_nodes": 2}, FOUR_GPUS, ["'dp'"]),
        ({"strategy": 3}, CPU_ONLY, ["strategy=3"]),
        ({"plugins": ["not a plugin"]}, CPU_ONLY, ["'not a plugin'", "ClusterEnvironment"]),
        (
            {"plugins": [LightningEnvironment(), TorchElasticEnvironment()]},
            CPU_ONLY,
            ["two cluster environments", "LightningEnvironment", "TorchElasticEnvironment"],
        ),
    ],
)
def test_impossible_flags_raise_one_clear_error(
    flags: dict[str, Any], inventory: Inventory, needles: list[str]
) -> None:
    with pytest.raises(LiteConfigurationError) as err:
        resolve(inventory, **flags)
    for needle in needles:
        assert needle in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(LiteConfigurationError) as err:
        resolve(strategy="nope", precision="nope", num_nodes=0)
    message = str(err.value)
    assert "strategy" in message and "precision" in message and "num_nodes" in message
    assert message.count("\n  - ") == 3


def test_dp_on_cpu_runs_as_ddp_with_a_warning() -> None:
    plan = resolve(strategy="dp", accelerator="cpu", devices=2)
    assert plan.strategy == "ddp"
    assert len(plan.warnings) == 1 and "dp" in plan.warnings[0] and "ddp" in plan.warnings[0]


def test_precision_16_without_cpu_fp16_autocast_runs_as_bf16_with_a_warning() -> None:
    inventory = Inventory(
        device_counts={"cpu": 1},
        installed=frozenset(),
        environment=LightningEnvironment(),
        cpu_fp16_autocast=False,
    )
    plan = resolve(inventory, precision=16)
    assert plan.precision == "bf16-mixed"
    assert "bf16" in plan.warnings[0]


@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed_stage_3", "ddp_sharded", "fsdp"])
def test_an_installed_backend_resolves(strategy: str) -> None:
    inventory = Inventory(
        device_counts={"cpu": 1},
        installed=frozenset({"deepspeed", "fairscale"}),
        environment=LightningEnvironment(),
    )
    plan = resolve(inventory, strategy=strategy, accelerator="cpu", devices=2)
    assert (plan.strategy, plan.world_size) == (strategy, 2)


def test_interactive_session_defaults_to_fork_and_refuses_script_relaunch() -> None:
    inventory = Inventory(
        device_counts={"cpu": 1}, installed=frozenset(), environment=LightningEnvironment(), interactive=True
    )
    assert resolve(inventory, accelerator="cpu", devices=2).strategy == "ddp_fork"
    with pytest.raises(LiteConfigurationError, match="ddp_fork"):
        resolve(inventory, accelerator="cpu", devices=2, strategy="ddp")


class MyCluster(ClusterEnvironment):
    @property
    def main_address(self) -> str:
        return "10.0.0.1"

    @property
    def main_port(self) -> int:
        return 1234

    def world_size(self) -> int:
        return 4


def test_custom_cluster_environment_in_plugins_wins() -> None:
    cluster = MyCluster()
    plan = resolve(plugins=[cluster], accelerator="cpu", devices=2, strategy="ddp")
    assert plan.environment is cluster


def test_spawn_under_an_external_launcher_uses_the_existing_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "TORCHELASTIC_RUN_ID": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }.items():
        monkeypatch.setenv(key, value)
    inventory = Inventory(
        device_counts={"cpu": 1}, installed=frozenset(), environment=TorchElasticEnvironment()
    )
    plan = resolve(inventory, accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert plan.strategy == "ddp"
    assert "TorchElasticEnvironment" in plan.warnings[0]
    assert resolve(inventory, accelerator="cpu", devices=2).strategy == "ddp"


@pytest.mark.parametrize("flags", [{"tpu_cores": 8}, {"tpu_cores": 1}, {"accelerator": "tpu", "devices": 8}])
def test_xla_devices_default_to_the_xla_strategy(flags: dict[str, Any]) -> None:
    inventory = Inventory(
        device_counts={"cpu": 1, "xla": 8},
        installed=frozenset({"torch_xla"}),
        environment=LightningEnvironment(),
    )
    plan = resolve(inventory, **flags)
    assert (plan.accelerator, plan.strategy) == ("xla", "xla")


def test_unavailable_devices_give_one_error_not_derived_ones() -> None:
    with pytest.raises(LiteConfigurationError) as err:
        resolve(tpu_cores=8)
    message = str(err.value)
    assert message.count("\n  - ") == 1, message
    assert "tpu_cores=8" in message and "xla" in message


WITH_BACKENDS = Inventory(
    device_counts={"cpu": 1, "xla": 8},
    installed=frozenset({"deepspeed", "fairscale", "torch_xla"}),
    environment=LightningEnvironment(),
)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (
            {"accelerator": "tpu", "devices": 8, "precision": 16},
            ["'xla'", "precision='16-mixed'", "32-true, bf16-true"],
        ),
        ({"strategy": "deepspeed", "devices": 2, "precision": 64}, ["'deepspeed'", "'64-true'", "float64"]),
        (
            {"strategy": "ddp_sharded", "devices": 2, "precision": 16, "accelerator": "cpu"},
            ["'ddp_sharded'", "'16-mixed' on 'cpu'", "ShardedGradScaler"],
        ),
    ],
)
def test_a_precision_the_strategy_refuses_is_reported_before_building(
    flags: dict[str, Any], needles: list[str]
) -> None:
    with pytest.raises(LiteConfigurationError) as err:
        resolve(WITH_BACKENDS, **flags)
    for needle in needles:
        assert needle in str(err.value)


def test_row_problems_are_listed_together_with_the_others() -> None:
    with pytest.raises(LiteConfigurationError) as err:
        resolve(CPU_ONLY, strategy="deepspeed", accelerator="cpu", devices=2, precision=64, num_nodes=0)
    message = str(err.value)
    assert message.count("\n  - ") == 3, message  # num_nodes, precision for deepspeed, deepspeed missing
    assert "num_nodes=0" in message and "'64-true'" in message and "lite-strategies[deepspeed]" in message


def test_a_precision_plugin_and_a_different_precision_flag_are_refused() -> None:
    from lite_precision import get_precision

    with pytest.raises(LiteConfigurationError, match="precision='bf16' and the precision plugin"):
        resolve(plugins=[get_precision("16-mixed", "cpu")], precision="bf16")
    plan = resolve(plugins=[get_precision("bf16-mixed", "cpu")], precision="bf16")
    assert plan.precision == "bf16-mixed"


def test_an_empty_accelerator_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(LiteConfigurationError, match=r"accelerator=''.*'cpu', 'cuda'"):
        resolve(accelerator="")


@pytest.mark.parametrize(
    "flags",
    [
        {"devices": 10**9},
        {"devices": str(10**9), "accelerator": "cpu"},
        {"devices": 257, "accelerator": "cpu"},
    ],
)
def test_more_devices_than_the_machine_holds_fail_fast(flags: dict[str, Any]) -> None:
    # Before, devices=10**9 built a billion device objects and was killed for memory.
    with pytest.raises(LiteConfigurationError, match="holds"):
        resolve(CPU_ONLY, **flags)


def test_fork_is_refused_on_windows_from_the_inventory_platform() -> None:
    windows = Inventory(
        device_counts={"cpu": 1}, installed=frozenset(), environment=LightningEnvironment(), platform="win32"
    )
    with pytest.raises(LiteConfigurationError, match="'fork' start method, which Windows lacks"):
        resolve(windows, strategy="ddp_fork", accelerator="cpu", devices=2)
    assert resolve(windows, strategy="ddp_spawn", accelerator="cpu", devices=2).strategy == "ddp_spawn"


def test_a_precision_the_device_cannot_run_is_reported_from_the_inventory() -> None:
    inventory = Inventory(
        device_counts={"cpu": 1, "cuda": 2},
        installed=frozenset(),
        environment=LightningEnvironment(),
        unsupported_precisions={("bf16-mixed", "cuda"): "bfloat16 needs Ampere"},
    )
    with pytest.raises(
        LiteConfigurationError, match="'bf16-mixed' cannot run on 'cuda': bfloat16 needs Ampere"
    ):
        resolve(inventory, accelerator="cuda", precision="bf16")


def test_a_registered_row_resolves_without_editing_the_facade() -> None:
    from lite_strategies import StrategySpec, register_strategy, strategy_provider

    spec = StrategySpec(
        name="resolve_test_row", factory="lite_strategies._ddp:DDPStrategy", accelerators=("cpu",),
        launcher="script", multi_process=True, interactive=False, precisions=("32-true",),
    )  # fmt: skip
    register_strategy(spec, provider="test_facade_resolve")
    assert strategy_provider("resolve_test_row") == "test_facade_resolve"
    plan = resolve(strategy="resolve_test_row", accelerator="cpu", devices=2)
    assert (plan.strategy, plan.world_size) == ("resolve_test_row", 2)
    with pytest.raises(LiteConfigurationError, match="'resolve_test_row' cannot run precision='bf16-mixed'"):
        resolve(strategy="resolve_test_row", accelerator="cpu", devices=2, precision="bf16")


def test_detected_inventory_reads_the_platform_and_the_backends() -> None:
    import sys

    inventory = Inventory.detect()
    assert inventory.platform == sys.platform
    assert inventory.checked is not None and {"deepspeed", "fairscale", "torch_xla"} <= inventory.checked
    assert inventory.installed <= inventory.checked
