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
        ({"strategy": "deepspeed"}, CPU_ONLY, ["deepspeed", "pip install 'lite-strategies[deepspeed]'"]),
        ({"strategy": "ddp_sharded"}, CPU_ONLY, ["fairscale", "lite-strategies[fairscale]"]),
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
