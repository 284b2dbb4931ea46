"""The registry: names, aliases, capability fields, lazy optional backends."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

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
    ("name", "cls"),
    [
        ("single_device", lite_strategies.SingleDeviceStrategy),
        ("dp", lite_strategies.DataParallelStrategy),
        ("ddp", lite_strategies.DDPStrategy),
        ("ddp_spawn", lite_strategies.DDPSpawnStrategy),
        ("ddp_fork", lite_strategies.DDPForkStrategy),
    ],
)
def test_builtin_rows_load_their_class(name: str, cls: type) -> None:
    spec = STRATEGIES[name]
    assert spec.load() is cls
    assert cls.strategy_name == name  # the class finds its own row back


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
    elif not spec.implemented:
        with pytest.raises(StrategyError, match="not implemented yet in this release"):
            spec.load()()
    else:
        assert spec.load().strategy_name == name


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
