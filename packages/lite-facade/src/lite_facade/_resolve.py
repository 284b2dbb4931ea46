"""Turn ``LightningLite``'s flags into a [`Plan`][lite_facade.Plan], or one error listing every problem.

``resolve_plan`` is a pure function of the flags and an [`Inventory`][lite_facade.Inventory] (everything read from
the machine and the process, platform included, gathered once), in named steps over the
registries: `normalize` the flags, `_choose_strategy`, `_collect_problems`
(from the strategy's registry row and the precision's ``unsupported_reason``), build the ``Plan``.
Nothing here names a strategy: adding one never edits this module.

No choice is rewritten silently. The rewrites kept for LightningLite compatibility are data,
and each one made is a line of ``Plan.warnings`` (``LightningLite`` shows them once, on rank 0):

- ``strategy='dp'`` on the CPU runs as ``'ddp'`` (the row's ``runs_as``);
- a spawn/fork strategy under an external launcher (torchrun, SLURM, ...) runs as its script
  twin in the processes that already exist (the row's ``runs_as_under_external_launcher``);
- ``precision=16`` on a CPU without float16 autocast runs as ``'bf16-mixed'`` (`PRECISION_FALLBACKS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lite_facade._flags import Flags, normalize
from lite_facade._plan import Inventory, LiteConfigurationError, Plan
from lite_strategies import (
    Strategy,
    StrategyError,
    StrategySpec,
    default_strategy,
    get_strategy_spec,
)

__all__ = ["PRECISION_FALLBACKS", "Inventory", "LiteConfigurationError", "Plan", "resolve_plan"]

#: (precision, device type) -> the precision that runs instead when the first cannot run there.
PRECISION_FALLBACKS: Mapping[tuple[str, str], str] = {("16-mixed", "cpu"): "bf16-mixed"}


def resolve_plan(
    *,
    accelerator: str | None = None,
    strategy: Any = None,
    devices: Any = None,
    num_nodes: int = 1,
    precision: int | str = 32,
    plugins: Any = None,
    gpus: Any = None,
    tpu_cores: Any = None,
    inventory: Inventory,
) -> Plan:
    """Resolve the flags into a [`Plan`][lite_facade.Plan]; raise [`LiteConfigurationError`][lite_facade.LiteConfigurationError] listing every problem.

    Examples:
        Two CPU processes in bf16 on a described machine (``Inventory.detect()`` describes this one):

        >>> from lite_collectives import LightningEnvironment
        >>> from lite_facade import Inventory, resolve_plan
        >>> machine = Inventory(device_counts={"cpu": 1}, installed=frozenset(), environment=LightningEnvironment())
        >>> plan = resolve_plan(accelerator="cpu", devices=2, precision="bf16", inventory=machine)
        >>> plan.strategy, plan.precision, plan.world_size
        ('ddp_spawn', 'bf16-mixed', 2)
    """
    given = dict(accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes,
                 precision=precision, plugins=plugins, gpus=gpus, tpu_cores=tpu_cores)  # fmt: skip
    problems: list[str] = []
    warnings: list[str] = []
    flags = normalize(given, inventory, problems)
    spec = _choose_strategy(flags, inventory, problems, warnings)
    if spec is not None and (flags.selection is not None or flags.strategy is not None):
        _collect_problems(flags, spec, inventory, problems, warnings)  # not for devices that failed to parse
    if problems:
        defaults = {"plugins": None, "num_nodes": 1, "precision": 32}
        asked = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None and v != defaults.get(k))
        raise LiteConfigurationError(
            f"LightningLite({asked}) cannot run here:\n"
            + "".join(f"  - {p}\n" for p in problems).rstrip("\n")
        )
    assert spec is not None and flags.precision is not None
    return Plan(
        accelerator=flags.accelerator,
        devices=flags.devices,
        num_nodes=flags.num_nodes,
        strategy=spec.name,
        precision=flags.precision,
        environment=flags.environment,
        strategy_object=flags.strategy if isinstance(flags.strategy, Strategy) else None,
        precision_plugin=flags.plugins.get("precision plugin"),
        checkpoint_io=flags.plugins.get("checkpoint IO"),
        warnings=tuple(warnings),
    )


def _choose_strategy(
    flags: Flags, inventory: Inventory, problems: list[str], warnings: list[str]
) -> StrategySpec | None:
    """Step 2: the row of the strategy object or name, or the one lite_strategies' default rules pick."""
    external = flags.environment.creates_processes_externally
    if isinstance(flags.strategy, Strategy):
        return flags.strategy.spec
    # "auto" (Fabric's and Lightning 2's default) is the same as leaving the strategy out.
    if flags.strategy is None or (
        isinstance(flags.strategy, str) and flags.strategy.strip().lower() == "auto"
    ):
        if flags.selection is None:
            return None  # a default for devices that failed to parse would only add derived errors
        world_size = flags.selection.num_devices * flags.num_nodes
        return get_strategy_spec(default_strategy(accelerator=flags.accelerator, world_size=world_size,
                                                  external_launcher=external, interactive=inventory.interactive))  # fmt: skip
    if not isinstance(flags.strategy, str):
        problems.append(f"strategy={flags.strategy!r}: expected a strategy name or a strategy object")
        return None
    try:
        spec = get_strategy_spec(flags.strategy)
    except StrategyError as err:
        problems.append(str(err))
        return None
    launcher = type(flags.environment).__name__ if external else None
    for _ in range(2):  # a row may run as another on this accelerator, then as its script twin
        instead = spec.runs_instead(accelerator=flags.accelerator, external_launcher=launcher)
        if instead is None:
            break
        warnings.append(
            f"strategy={spec.name!r} {instead[1]}: running as strategy={instead[0]!r}, as LightningLite did."
        )
        spec = get_strategy_spec(instead[0])
    return spec


def _collect_problems(
    flags: Flags, spec: StrategySpec, inventory: Inventory, problems: list[str], warnings: list[str]
) -> None:
    """Step 3: the precision fallback, then every problem the precision mode and the row report."""
    device_type, precision = flags.devices[0].type, flags.precision
    if precision is not None and "precision plugin" not in flags.plugins:
        reason = inventory.precision_problem(precision, device_type)
        fallback = PRECISION_FALLBACKS.get((precision, device_type))
        if reason is not None and fallback is not None:
            warnings.append(
                f"precision={precision!r} cannot run here ({reason}): using {fallback!r}, as LightningLite did."
            )
            flags.precision = precision = fallback
        elif reason is not None and spec.precision_plugin is None:  # a backend's own plugin decides alone
            problems.append(f"precision={precision!r} cannot run on {device_type!r}: {reason}")
    installed = inventory.installed
    if spec.requires and inventory.checked is not None and spec.requires not in inventory.checked:
        installed = installed | {spec.requires}  # not looked for (an entry-point row): building checks it
    problems += spec.problems(
        accelerator=flags.accelerator,
        precision=precision,
        num_devices=len(flags.devices),
        num_nodes=flags.num_nodes,
        installed=installed,
        platform=inventory.platform,
        interactive=inventory.interactive,
        external_launcher=flags.environment.creates_processes_externally,
    )
