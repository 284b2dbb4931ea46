"""The registry: names, aliases, capability fields, lazy optional backends."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lite_strategies
from lite_strategies import STRATEGIES, StrategyError, StrategySpec, build_registry, get_strategy_spec


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        ("single_device", "single_device"),
        ("DDP", "ddp"),
        ("ddp_spawn", "ddp_spawn"),
        ("ddp_notebook", "ddp_fork"),
        ("ddp_fork", "ddp_fork"),
        ("dp", "dp"),
        ("tpu_spawn", "xla"),
        ("xla", "xla"),
        ("ddp_sharded", "ddp_sharded"),
        ("ddp_sharded_spawn", "ddp_sharded_spawn"),
        ("deepspeed", "deepspeed"),
        ("fsdp", "fsdp"),
    ],
)
def test_names_and_aliases_resolve(asked: str, name: str) -> None:
    assert get_strategy_spec(asked).name == name


def test_unknown_name_lists_the_accepted_ones() -> None:
    with pytest.raises(StrategyError, match=r"unknown strategy 'horovod'.*ddp_notebook.*tpu_spawn"):
        get_strategy_spec("horovod")


@pytest.mark.parametrize(
    ("name", "cls", "alias"),
    [
        ("single_device", lite_strategies.SingleDeviceStrategy, None),
        ("dp", lite_strategies.DataParallelStrategy, None),
        ("ddp", lite_strategies.DDPStrategy, None),
        # variants are rows over one class; the seed's class names stay as thin aliases
        ("ddp_spawn", lite_strategies.DDPStrategy, lite_strategies.DDPSpawnStrategy),
        ("ddp_fork", lite_strategies.DDPStrategy, lite_strategies.DDPForkStrategy),
    ],
)
def test_builtin_rows_load_their_class(name: str, cls: type, alias: type | None) -> None:
    # Changed by issue 14: ddp_spawn/ddp_fork load DDPStrategy (was: one class per row).
    spec = STRATEGIES[name]
    assert spec.load() is cls
    built = (
        spec.build(devices=[torch.device("cpu")] * (1 if name in ("single_device", "dp") else 2))
        if name != "dp"
        else None
    )
    if built is not None:
        assert type(built) is cls and built.strategy_name == name and built.spec is spec
        assert built.launcher_kind == spec.launcher
    if alias is not None:
        assert issubclass(alias, cls) and alias.strategy_name == name  # the alias finds its row back
        assert alias().launcher_kind == spec.launcher


def test_a_variant_row_keeps_its_launcher_through_configured_and_pickle() -> None:
    strategy = STRATEGIES["ddp_fork"].build()
    clone = pickle.loads(pickle.dumps(strategy.configured(devices=[torch.device("cpu")] * 2)))
    assert (clone.strategy_name, clone.launcher_kind, type(clone)) == (
        "ddp_fork",
        "fork",
        lite_strategies.DDPStrategy,
    )
    assert isinstance(clone.launcher, lite_strategies.SpawnLauncher)


def test_deepspeed_stage_rows_carry_init_kwargs_over_one_class() -> None:
    rows = {name: spec for name, spec in STRATEGIES.items() if name.startswith("deepspeed")}
    assert {spec.factory for spec in rows.values()} == {"lite_strategies.deepspeed:DeepSpeedStrategy"}
    assert dict(rows["deepspeed_stage_3_offload"].init_kwargs) == {
        "stage": 3,
        "offload_optimizer": True,
        "offload_parameters": True,
    }
    assert dict(rows["deepspeed_stage_1"].init_kwargs) == {"stage": 1}
    from lite_strategies.deepspeed import DeepSpeedStage3OffloadStrategy, DeepSpeedStrategy

    assert issubclass(DeepSpeedStage3OffloadStrategy, DeepSpeedStrategy)
    assert DeepSpeedStage3OffloadStrategy.strategy_name == "deepspeed_stage_3_offload"


@pytest.mark.parametrize(
    ("name", "launcher", "multi_process", "interactive"),
    [
        ("single_device", None, False, True),
        ("dp", None, False, True),
        ("ddp", "script", True, False),
        ("ddp_spawn", "spawn", True, False),
        ("ddp_fork", "fork", True, True),
        ("xla", "xla", True, False),
    ],
)
def test_capability_fields(name: str, launcher: str | None, multi_process: bool, interactive: bool) -> None:
    spec = STRATEGIES[name]
    assert (spec.launcher, spec.multi_process, spec.interactive) == (launcher, multi_process, interactive)


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("deepspeed", "deepspeed", "deepspeed"),
        ("ddp_sharded", "fairscale", "fairscale"),
        ("ddp_sharded_spawn", "fairscale", "fairscale"),
        ("xla", "torch_xla", "xla"),
    ],
)
def test_optional_backends_name_their_pip_extra(name: str, module: str, extra: str) -> None:
    spec = STRATEGIES[name]
    assert (spec.requires, spec.extra) == (module, extra)
    if importlib.util.find_spec(module) is None:
        with pytest.raises(
            StrategyError,
            match=re.escape(
                f"pip install '{spec.requirement}' (what the extra lite-strategies[{extra}] installs)"
            ),
        ):
            spec.load()
        assert not spec.is_available()
    else:
        assert issubclass(spec.load(), lite_strategies.Strategy)


def test_import_loads_no_optional_backend() -> None:
    code = (
        "import sys, lite_strategies; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'fairscale', 'torch_xla')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _row(name: str, *aliases: str) -> StrategySpec:
    return StrategySpec(
        name=name, aliases=aliases, factory="m:C", accelerators=("cpu",), launcher=None,
        multi_process=False, interactive=True,
    )  # fmt: skip


def test_a_name_used_twice_names_both_rows() -> None:
    with pytest.raises(StrategyError, match="'x' is used by both 'a' and 'b'"):
        build_registry([_row("a", "x"), _row("b", "X")])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"factory": "no_colon"}, "module:Class"),
        ({"launcher": "mpirun"}, "launcher 'mpirun'"),
        ({"requires": "foo"}, "both requires and extra"),
    ],
)
def test_bad_rows_fail_at_definition(changes: dict[str, str], message: str) -> None:
    fields = dict(
        name="n", aliases=(), factory="m:C", accelerators=("cpu",), launcher=None,
        multi_process=False, interactive=True,
    )  # fmt: skip
    with pytest.raises(StrategyError, match=message):
        StrategySpec(**{**fields, **changes})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- problems()


def test_problems_lists_every_incompatibility_without_building() -> None:
    found = STRATEGIES["single_device"].problems(accelerator="xla", num_devices=2, num_nodes=2)
    assert len(found) == 3, found
    assert (
        "cannot run on accelerator 'xla'" in found[0]
        and "at most 1" in found[1]
        and "num_nodes=2" in found[2]
    )
    assert (
        STRATEGIES["ddp"].problems(accelerator="cpu", precision="64-true", num_devices=4, num_nodes=3) == []
    )


@pytest.mark.parametrize(
    ("name", "accelerator", "precision", "needle"),
    [
        ("xla", "xla", "16-mixed", "it runs: 32-true, bf16-true"),
        ("deepspeed", "cpu", "64-true", "no float64 mode"),
        ("ddp_sharded", "cpu", "16-mixed", "ShardedGradScaler"),
    ],
)
def test_rows_refuse_the_precisions_their_backend_cannot_run(
    name: str, accelerator: str, precision: str, needle: str
) -> None:
    (problem,) = STRATEGIES[name].problems(
        accelerator=accelerator,
        precision=precision,
        num_devices=2,
        installed={"deepspeed", "fairscale", "torch_xla"},
    )
    assert f"cannot run precision={precision!r}" in problem and needle in problem
    assert (
        STRATEGIES["ddp_sharded"].problems(accelerator="cuda", precision="16-mixed", installed={"fairscale"})
        == []
    )


def test_process_problems_come_from_the_launcher_kind() -> None:
    fork, ddp = STRATEGIES["ddp_fork"], STRATEGIES["ddp"]
    assert "Windows lacks" in fork.problems(accelerator="cpu", platform="win32")[0]
    assert fork.problems(accelerator="cpu", interactive=True) == []
    assert "interactive session" in ddp.problems(accelerator="cpu", interactive=True)[0]
    assert ddp.problems(accelerator="cpu", interactive=True, external_launcher=True) == []


def test_the_version_floor_is_checked_from_metadata_without_importing() -> None:
    from importlib.metadata import version

    row = _row("floor")
    too_new = dataclasses.replace(row, requires="packaging", extra="x", min_version="9999")
    problem = too_new.backend_problem()
    assert problem is not None and f"packaging {version('packaging')} is installed" in problem
    assert "'packaging>=9999'" in problem and not too_new.is_available()
    assert dataclasses.replace(too_new, min_version="1").backend_problem() is None
    missing = dataclasses.replace(row, requires="no_such_module_here", extra="x")
    assert (
        "not installed: pip install 'no_such_module_here' (what the extra lite-strategies[x] installs)"
        in str(missing.backend_problem())
    )


def test_default_strategy_is_data() -> None:
    assert lite_strategies.DEFAULT_STRATEGY[-1] == lite_strategies.DefaultRule("ddp_spawn")
    choose = lite_strategies.default_strategy
    assert choose(accelerator="cpu", world_size=1) == "single_device"
    assert choose(accelerator="cpu", world_size=2) == "ddp_spawn"
    assert choose(accelerator="cuda", world_size=2, interactive=True) == "ddp_fork"
    assert choose(accelerator="cpu", world_size=2, external_launcher=True, interactive=True) == "ddp"
    assert choose(accelerator="xla", world_size=1) == "xla"


# ---------------------------------------------------------------------------- the open registry


class MineStrategy(lite_strategies.DDPStrategy):
    strategy_name = "registry_test_mine"


def test_a_strategy_subclass_registers_as_its_parents_row_renamed() -> None:
    spec = lite_strategies.register_strategy(MineStrategy, description="mine")
    assert get_strategy_spec("registry_test_mine") is spec
    assert (spec.factory, spec.launcher, spec.accelerators) == (
        f"{__name__}:MineStrategy",
        "script",
        ("cpu", "cuda"),
    )
    strategy = spec.build(devices=[torch.device("cpu")] * 2)
    assert type(strategy) is MineStrategy and strategy.world_size == 2
    assert isinstance(MineStrategy().launcher, lite_strategies.ScriptLauncher)  # built directly, too
    with pytest.raises(StrategyError, match="subclass a registered strategy"):
        lite_strategies.register_strategy(lite_strategies.DDPStrategy)


def test_a_duplicate_name_names_both_providers() -> None:
    with pytest.raises(
        StrategyError,
        match=r"'ddp_notebook' of my_plugin .*already used by lite_strategies \(row 'ddp_fork'\)",
    ):
        lite_strategies.register_strategy(_row("registry_test_dup", "ddp_notebook"), provider="my_plugin")
    with pytest.raises(StrategyError, match="unknown strategy 'registry_test_dup'"):
        get_strategy_spec("registry_test_dup")  # nothing half-registered


_PLUGIN_MODULE = """
import lite_strategies

class PluginStrategy(lite_strategies.DDPStrategy):
    strategy_name = "{name}"

ROW = lite_strategies.StrategySpec(
    name="{name}", factory="{module}:PluginStrategy", accelerators=("cpu",), launcher="script",
    multi_process=True, interactive=False,
)
"""


def _fake_distribution(root: Path, dist: str, module: str, name: str) -> None:
    (root / f"{module}.py").write_text(_PLUGIN_MODULE.format(name=name, module=module))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lite.strategies]\n{name} = {module}:ROW\n")


def test_entry_points_load_only_when_a_name_is_not_found(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "lite_ep_plugin", "lite_ep_plugin_mod", "ep_strategy")
    code = (
        "import sys, torch, lite_strategies as ls\n"
        "ls.get_strategy_spec('ddp'); ls.strategy_specs(entry_points=False)\n"
        "assert 'lite_ep_plugin_mod' not in sys.modules\n"
        "spec = ls.get_strategy_spec('EP_strategy')\n"
        "assert 'lite_ep_plugin_mod' in sys.modules\n"
        "print(ls.strategy_provider('ep_strategy'))\n"
        "s = spec.build(devices=[torch.device('cpu')] * 2)\n"
        "print(type(s).__name__, s.world_size, s.launcher_kind)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        "lite_ep_plugin (entry point 'ep_strategy')",
        "PluginStrategy 2 script",
    ]


def test_an_entry_point_reusing_a_name_names_both_providers(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "lite_ep_clash", "lite_ep_clash_mod", "ddp_spawn")
    code = "import lite_strategies as ls\nls.get_strategy_spec('not_there')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0
    assert "'ddp_spawn' of lite_ep_clash (entry point 'ddp_spawn')" in out.stderr
    assert "already used by lite_strategies (row 'ddp_spawn')" in out.stderr


def test_start_method_is_read_from_the_row() -> None:
    assert [STRATEGIES[n].build().start_method for n in ("ddp", "ddp_spawn", "ddp_fork")] == [
        None,
        "spawn",
        "fork",
    ]
