"""The registry: names, aliases, capability fields, lazy optional backends."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys

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
    assert {spec.factory for spec in rows.values()} == {"lite_strategies._deepspeed:DeepSpeedStrategy"}
    assert dict(rows["deepspeed_stage_3_offload"].init_kwargs) == {
        "stage": 3,
        "offload_optimizer": True,
        "offload_parameters": True,
    }
    assert dict(rows["deepspeed_stage_1"].init_kwargs) == {"stage": 1}
    from lite_strategies._deepspeed import DeepSpeedStage3OffloadStrategy, DeepSpeedStrategy

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
        with pytest.raises(StrategyError, match=rf"pip install 'lite-strategies\[{extra}\]'"):
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
