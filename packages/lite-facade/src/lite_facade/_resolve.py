"""Turn ``LightningLite``'s flags into a :class:`Plan`, or one error listing every problem.

``resolve_plan`` is a pure function of the flags and an :class:`Inventory` (everything it reads
from the machine and the process, gathered once), in four named steps over the registries:
:func:`_normalize` the flags, :func:`_choose_strategy`, :func:`_collect_problems` (from the
strategy's registry row and the precision's ``unsupported_reason``), then build the ``Plan``.
Nothing about a particular strategy is written here: adding one never edits this module.

It never rewrites a choice silently. The rewrites kept for LightningLite compatibility are
data, and each one made is a line of ``Plan.warnings`` (``LightningLite`` shows them once, on
rank 0):

- ``strategy='dp'`` on the CPU runs as ``'ddp'`` (the row's ``runs_as``);
- a spawn/fork strategy under an external launcher (torchrun, SLURM, ...) runs as its script
  twin in the processes that already exist (the row's ``runs_as_under_external_launcher``);
- ``precision=16`` on a CPU without float16 autocast runs as ``'bf16-mixed'``
  (:data:`PRECISION_FALLBACKS`).
"""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lite_collectives import ClusterEnvironment, detect_environment
from lite_devices import (
    ACCELERATORS,
    DeviceError,
    DeviceSelection,
    available_accelerators,
    get_accelerator,
    parse_devices,
)
from lite_precision import PRECISIONS, Precision, PrecisionError, canonical_precision
from lite_strategies import (
    CheckpointIO,
    Strategy,
    StrategyError,
    StrategySpec,
    default_strategy,
    get_strategy_spec,
    strategy_specs,
)

#: (precision, device type) -> the precision that runs instead when the first cannot run there.
PRECISION_FALLBACKS: Mapping[tuple[str, str], str] = {("16-mixed", "cpu"): "bf16-mixed"}


class LiteConfigurationError(ValueError):
    """The flags given to ``LightningLite`` cannot work on this machine; the message lists why."""


@dataclass(frozen=True)
class Inventory:
    """What the resolver may know about the machine and the process, gathered once by :meth:`detect`.

    Attributes:
        device_counts: canonical accelerator name -> how many devices of it this machine has.
        installed: the optional backends usable here (module names: ``deepspeed``, ``fairscale``, ...).
        environment: the cluster environment detected from the environment variables.
        interactive: whether this runs in a notebook / interactive interpreter (no script to re-run).
        cpu_fp16_autocast: whether this torch can autocast to float16 on the CPU.
        platform: ``sys.platform`` (Windows has no 'fork').
        max_cpu_processes: the most CPU processes one node may run (8 per core).
        unsupported_precisions: (precision, device type) -> why it cannot run, for this machine's devices.
        checked: the optional modules looked for (None: every one a row may need). A row loaded
            later (from an entry point) that needs another is left to the build to check.
    """

    device_counts: Mapping[str, int]
    installed: frozenset[str]
    environment: ClusterEnvironment
    interactive: bool = False
    cpu_fp16_autocast: bool = True
    platform: str = sys.platform
    max_cpu_processes: int = 256
    unsupported_precisions: Mapping[tuple[str, str], str] = field(default_factory=dict)
    checked: frozenset[str] | None = None

    @classmethod
    def detect(cls) -> Inventory:
        main = sys.modules.get("__main__")
        types = {ACCELERATORS[name].device_type for name in available_accelerators()}
        reasons = {
            (name, t): reason
            for name, mode in PRECISIONS.items()
            for t in types
            if (reason := mode.unsupported_reason(t)) is not None
        }
        # the rows known now; entry points load only when a strategy name is not found
        wanted = {s.requires: s for s in strategy_specs(entry_points=False).values() if s.requires}
        return cls(
            device_counts={name: ACCELERATORS[name].device_count() for name in available_accelerators()},
            installed=frozenset(module for module, spec in wanted.items() if spec.is_available()),
            environment=detect_environment(),
            interactive=bool(getattr(sys, "ps1", None)) or not hasattr(main, "__file__"),
            cpu_fp16_autocast=("16-mixed", "cpu") not in reasons,
            platform=sys.platform,
            max_cpu_processes=8 * (os.cpu_count() or 1),
            unsupported_precisions=reasons,
            checked=frozenset(wanted),
        )

    def precision_problem(self, precision: str, device_type: str) -> str | None:
        """Why ``precision`` cannot run on ``device_type`` here, or None."""
        if (precision, device_type) == ("16-mixed", "cpu") and not self.cpu_fp16_autocast:
            return f"torch {torch.__version__} has no float16 autocast on the CPU"
        return self.unsupported_precisions.get((precision, device_type))


@dataclass(frozen=True)
class Plan:
    """Everything ``LightningLite`` needs to build its strategy; valid by construction.

    ``strategy`` is the canonical strategy name; ``strategy_object`` is the user's own strategy
    instance when one was passed. ``warnings`` lists each LightningLite-compatible rewrite made.
    """

    accelerator: str
    devices: tuple[torch.device, ...]
    num_nodes: int
    strategy: str
    precision: str
    environment: ClusterEnvironment
    strategy_object: Strategy | None = None
    precision_plugin: Precision | None = None
    checkpoint_io: CheckpointIO | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def world_size(self) -> int:
        return len(self.devices) * self.num_nodes


@dataclass
class _Flags:
    """The flags after step 1: canonical names, or None where a problem was recorded."""

    accelerator: str
    devices: tuple[torch.device, ...]
    selection: DeviceSelection | None
    num_nodes: int
    strategy: Any
    precision: str | None
    environment: ClusterEnvironment
    plugins: dict[str, Any]


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
    """Resolve the flags into a :class:`Plan`; raise :class:`LiteConfigurationError` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    flags = _normalize(
        accelerator, strategy, devices, num_nodes, precision, plugins, gpus, tpu_cores, inventory, problems
    )
    spec = _choose_strategy(flags, inventory, problems, warnings)
    if spec is not None and (flags.selection is not None or flags.strategy is not None):
        _collect_problems(flags, spec, inventory, problems, warnings)  # not for devices that failed to parse
    if problems:
        given = dict(
            accelerator=accelerator, strategy=strategy, devices=devices, gpus=gpus, tpu_cores=tpu_cores
        )
        given.update(
            num_nodes=num_nodes if num_nodes != 1 else None, precision=precision if precision != 32 else None
        )
        asked = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        raise LiteConfigurationError(
            f"LightningLite({asked}) cannot run here:\n" + "\n".join(f"  - {p}" for p in problems)
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


_PLUGIN_KINDS = (
    ("cluster environment", ClusterEnvironment),
    ("precision plugin", Precision),
    ("checkpoint IO", CheckpointIO),
    ("strategy", Strategy),
)


def _normalize(
    accelerator: Any, strategy: Any, devices: Any, num_nodes: Any, precision: Any, plugins: Any,
    gpus: Any, tpu_cores: Any, inventory: Inventory, problems: list[str],
) -> _Flags:  # fmt: skip
    """Step 1: sort the plugins, check num_nodes, parse devices and precision into canonical values."""
    found: dict[str, Any] = {}
    for item in [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]:
        kind = next((kind for kind, cls in _PLUGIN_KINDS if isinstance(item, cls)), None)
        if kind is None:
            problems.append(
                f"plugins holds {item!r}, which is none of: a ClusterEnvironment, a precision plugin, "
                "a CheckpointIO or a strategy object"
            )
        elif kind in found:
            problems.append(
                f"plugins holds two {kind}s ({type(found[kind]).__name__} and {type(item).__name__}); "
                "pass one of each kind at most"
            )
        else:
            found[kind] = item
    if "strategy" in found:
        if strategy is not None:
            problems.append(
                "a strategy was given both as `strategy=` and in `plugins`; pass it once, as `strategy=`"
            )
        strategy = found.pop("strategy")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        problems.append(f"num_nodes={num_nodes!r}: must be an int >= 1 (the number of machines taking part)")
        num_nodes = 1

    selection = _parse_devices(devices, accelerator, gpus, tpu_cores, inventory, problems)
    plugin = found.get("precision plugin")
    name = None
    try:
        name = canonical_precision(precision)
        if plugin is not None and precision != 32 and name != plugin.name:
            problems.append(
                f"precision={precision!r} and the precision plugin {plugin!r} disagree; pass one of them"
            )
    except PrecisionError as err:
        problems.append(str(err))
    return _Flags(
        accelerator=selection.accelerator
        if selection
        else _fallback_accelerator(accelerator, gpus, tpu_cores),
        devices=selection.devices if selection else (torch.device("cpu"),),
        selection=selection,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=plugin.name if plugin is not None else name,
        environment=found.get("cluster environment") or inventory.environment,
        plugins=found,
    )


def _parse_devices(
    devices: Any, accelerator: Any, gpus: Any, tpu_cores: Any, inventory: Inventory, problems: list[str]
) -> DeviceSelection | None:
    asked = devices if devices is not None else gpus if gpus is not None else tpu_cores
    count = _int_or_none(asked)
    most = max(inventory.max_cpu_processes, *inventory.device_counts.values())
    if count is not None and count > most:  # refused before parsing builds one object per device
        problems.append(
            f"devices={asked!r}: this machine holds at most {most} (cpu: {inventory.max_cpu_processes} processes, "
            + ", ".join(f"{k}: {v}" for k, v in inventory.device_counts.items() if k != "cpu")
            + ")"
        )
        return None
    if accelerator is None:
        accelerator = "cpu" if gpus is None and tpu_cores is None else "auto"
    try:
        selection = parse_devices(
            devices, accelerator, gpus=gpus, tpu_cores=tpu_cores, device_counts=inventory.device_counts
        )
    except DeviceError as err:
        problems.append(str(err))
        return None
    if selection.accelerator == "cpu" and selection.num_devices > inventory.max_cpu_processes:
        problems.append(
            f"devices={asked!r}: {selection.num_devices} CPU processes is more than this machine holds "
            f"({inventory.max_cpu_processes}, 8 per core)"
        )
        return None
    return selection


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _fallback_accelerator(accelerator: Any, gpus: Any, tpu_cores: Any) -> str:
    """An accelerator to check the strategy against when the devices did not parse."""
    if gpus is not None or tpu_cores is not None:
        return "cuda" if gpus is not None else "xla"
    try:
        return get_accelerator(accelerator or "cpu").name
    except DeviceError:
        return "cpu"


def _choose_strategy(
    flags: _Flags, inventory: Inventory, problems: list[str], warnings: list[str]
) -> StrategySpec | None:
    """Step 2: the row of the strategy named, given as an object, or chosen by lite_strategies' default rules."""
    external = flags.environment.creates_processes_externally
    if isinstance(flags.strategy, Strategy):
        return flags.strategy.spec
    if flags.strategy is None:
        if flags.selection is None:
            return None  # a default for devices that failed to parse would only add derived errors
        name = default_strategy(
            accelerator=flags.accelerator,
            world_size=flags.selection.num_devices * flags.num_nodes,
            external_launcher=external,
            interactive=inventory.interactive,
        )
        return get_strategy_spec(name)
    if not isinstance(flags.strategy, str):
        problems.append(f"strategy={flags.strategy!r}: expected a strategy name or a strategy object")
        return None
    try:
        spec = get_strategy_spec(flags.strategy)
    except StrategyError as err:
        problems.append(str(err))
        return None
    if flags.accelerator in spec.runs_as:
        target = spec.runs_as[flags.accelerator]
        warnings.append(
            f"strategy={spec.name!r} does not run on {flags.accelerator!r}; it runs as strategy={target!r} "
            "(as LightningLite did)."
        )
        spec = get_strategy_spec(target)
    if external and spec.runs_as_under_external_launcher is not None:
        target = spec.runs_as_under_external_launcher
        warnings.append(
            f"strategy={spec.name!r} would start processes, but {type(flags.environment).__name__} already "
            f"started them: running as strategy={target!r} in the existing processes."
        )
        spec = get_strategy_spec(target)
    return spec


def _collect_problems(
    flags: _Flags, spec: StrategySpec, inventory: Inventory, problems: list[str], warnings: list[str]
) -> None:
    """Step 3: the precision fallback, then every problem the row and the precision mode report."""
    device_type = flags.devices[0].type
    precision = flags.precision
    if precision is not None and "precision plugin" not in flags.plugins:
        reason = inventory.precision_problem(precision, device_type)
        fallback = PRECISION_FALLBACKS.get((precision, device_type))
        if reason is not None and fallback is not None:
            warnings.append(
                f"precision={precision!r} cannot run here ({reason}): using {fallback!r} (as LightningLite did)."
            )
            flags.precision = precision = fallback
        elif reason is not None and spec.precision_plugin is None:  # a backend's own plugin decides alone
            problems.append(f"precision={precision!r} cannot run on {device_type!r}: {reason}")
    installed = inventory.installed
    if spec.requires and inventory.checked is not None and spec.requires not in inventory.checked:
        installed = installed | {spec.requires}  # not looked for: building the strategy checks it
    problems.extend(
        spec.problems(
            accelerator=flags.accelerator,
            precision=precision,
            num_devices=len(flags.devices),
            num_nodes=flags.num_nodes,
            installed=installed,
            platform=inventory.platform,
            interactive=inventory.interactive,
            external_launcher=flags.environment.creates_processes_externally,
        )
    )
