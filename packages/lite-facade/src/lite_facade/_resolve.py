"""Turn ``LightningLite``'s flags into a :class:`Plan`, or one error listing every problem.

``resolve_plan`` is a pure function of the flags and an :class:`Inventory` (what this machine
has, which optional backends import, which cluster environment was detected), so it is tested
as a table of flags -> plan or error. It never rewrites a choice silently: the two rewrites kept
for LightningLite compatibility (``dp`` on CPU runs as ``ddp``; ``precision=16`` on a CPU
without float16 autocast runs as ``bf16-mixed``) are recorded in ``Plan.warnings``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lite_collectives import ClusterEnvironment, detect_environment
from lite_devices import ACCELERATORS, DeviceError, available_accelerators, get_accelerator, parse_devices
from lite_precision import Precision, PrecisionError, canonical_precision, get_precision
from lite_strategies import CheckpointIO, Strategy, StrategyError, get_strategy_spec

_OPTIONAL_MODULES = ("deepspeed", "fairscale", "torch_xla")


class LiteConfigurationError(ValueError):
    """The flags given to ``LightningLite`` cannot work on this machine; the message lists why."""


@dataclass(frozen=True)
class Inventory:
    """What the resolver may know about the machine and the process, gathered once.

    Attributes:
        device_counts: canonical accelerator name -> how many devices of it this machine has.
        installed: the optional backends that can be imported (``deepspeed``, ``fairscale``, ``torch_xla``).
        environment: the cluster environment detected from the environment variables.
        interactive: whether this runs in a notebook / interactive interpreter (no script to re-run).
        cpu_fp16_autocast: whether this torch can autocast to float16 on the CPU.
    """

    device_counts: Mapping[str, int]
    installed: frozenset[str]
    environment: ClusterEnvironment
    interactive: bool = False
    cpu_fp16_autocast: bool = True

    @classmethod
    def detect(cls) -> Inventory:
        main = sys.modules.get("__main__")
        return cls(
            device_counts={name: ACCELERATORS[name].device_count() for name in available_accelerators()},
            installed=frozenset(m for m in _OPTIONAL_MODULES if importlib.util.find_spec(m) is not None),
            environment=detect_environment(),
            interactive=bool(getattr(sys, "ps1", None)) or not hasattr(main, "__file__"),
            cpu_fp16_autocast=_cpu_fp16_autocast(),
        )


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
    errors: list[str] = []
    warnings: list[str] = []

    environment, precision_plugin, checkpoint_io, plugin_strategy = _sort_plugins(plugins, errors)
    environment = environment or inventory.environment
    if plugin_strategy is not None:
        if strategy is not None:
            errors.append(
                "a strategy was given both as `strategy=` and in `plugins`; pass it once, as `strategy=`"
            )
        strategy = plugin_strategy

    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        errors.append(f"num_nodes={num_nodes!r}: must be an int >= 1 (the number of machines taking part)")
        num_nodes = 1

    selection = None
    try:
        selection = parse_devices(
            devices,
            "cpu" if accelerator is None and gpus is None and tpu_cores is None else accelerator or "auto",
            gpus=gpus,
            tpu_cores=tpu_cores,
            device_counts=inventory.device_counts,
        )
    except DeviceError as err:
        errors.append(str(err))
    accelerator_name = selection.accelerator if selection else _accelerator_name(accelerator, gpus, tpu_cores)
    device_list = selection.devices if selection else (torch.device("cpu"),)

    strategy_name, strategy_object = _strategy_name(
        strategy, accelerator_name, len(device_list), num_nodes, environment, inventory, errors
    )
    # A default strategy chosen for devices that failed to parse would only add derived errors.
    if strategy_name is not None and (selection is not None or strategy is not None):
        strategy_name = _check_strategy(
            strategy_name,
            accelerator_name,
            len(device_list),
            num_nodes,
            environment,
            inventory,
            errors,
            warnings,
        )

    precision_name = _precision_name(
        precision, precision_plugin, accelerator_name, inventory, errors, warnings
    )

    if errors:
        asked = _describe_flags(accelerator, strategy, devices, num_nodes, precision, gpus, tpu_cores)
        raise LiteConfigurationError(
            f"LightningLite({asked}) cannot run here:\n" + "\n".join(f"  - {e}" for e in errors)
        )
    assert strategy_name is not None and precision_name is not None
    return Plan(
        accelerator=accelerator_name,
        devices=tuple(device_list),
        num_nodes=num_nodes,
        strategy=strategy_name,
        precision=precision_name,
        environment=environment,
        strategy_object=strategy_object,
        precision_plugin=precision_plugin,
        checkpoint_io=checkpoint_io,
        warnings=tuple(warnings),
    )


def _sort_plugins(
    plugins: Any, errors: list[str]
) -> tuple[ClusterEnvironment | None, Precision | None, CheckpointIO | None, Strategy | None]:
    if plugins is None:
        return None, None, None, None
    items = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    kinds: dict[str, Any] = {}
    for item in items:
        for kind, cls in (
            ("cluster environment", ClusterEnvironment),
            ("precision plugin", Precision),
            ("checkpoint IO", CheckpointIO),
            ("strategy", Strategy),
        ):
            if isinstance(item, cls):
                if kind in kinds:
                    errors.append(
                        f"plugins holds two {kind}s ({type(kinds[kind]).__name__} and {type(item).__name__}); "
                        "pass one of each kind at most"
                    )
                kinds[kind] = item
                break
        else:
            errors.append(
                f"plugins holds {item!r}, which is none of: a ClusterEnvironment, a precision plugin, "
                "a CheckpointIO or a strategy object"
            )
    return (
        kinds.get("cluster environment"),
        kinds.get("precision plugin"),
        kinds.get("checkpoint IO"),
        kinds.get("strategy"),
    )


def _accelerator_name(accelerator: str | None, gpus: Any, tpu_cores: Any) -> str:
    if gpus is not None:
        return "cuda"
    if tpu_cores is not None:
        return "xla"
    try:
        return get_accelerator(accelerator or "cpu").name
    except DeviceError:
        return "cpu"


def _strategy_name(
    strategy: Any,
    accelerator: str,
    num_devices: int,
    num_nodes: int,
    environment: ClusterEnvironment,
    inventory: Inventory,
    errors: list[str],
) -> tuple[str | None, Strategy | None]:
    if isinstance(strategy, Strategy):
        return type(strategy).strategy_name, strategy
    if strategy is None:
        if accelerator == "xla":  # one strategy runs one or many XLA devices
            return "xla", None
        if num_devices * num_nodes <= 1:
            return "single_device", None
        if environment.creates_processes_externally:
            return "ddp", None
        return ("ddp_fork" if inventory.interactive else "ddp_spawn"), None
    if not isinstance(strategy, str):
        errors.append(f"strategy={strategy!r}: expected a strategy name or a strategy object")
        return None, None
    try:
        return get_strategy_spec(strategy).name, None
    except StrategyError as err:
        errors.append(str(err))
        return None, None


def _check_strategy(
    name: str,
    accelerator: str,
    num_devices: int,
    num_nodes: int,
    environment: ClusterEnvironment,
    inventory: Inventory,
    errors: list[str],
    warnings: list[str],
) -> str:
    spec = get_strategy_spec(name)
    if name == "dp" and accelerator == "cpu":
        # LightningLite ran this as DDP; keep running it, but say so.
        warnings.append(
            "strategy='dp' needs GPUs; on the CPU it runs as strategy='ddp' (as LightningLite did)."
        )
        spec = get_strategy_spec("ddp")
    if spec.launcher in ("spawn", "fork") and environment.creates_processes_externally:
        warnings.append(
            f"strategy={spec.name!r} would start processes, but {type(environment).__name__} already started "
            "them: running as strategy='ddp' in the existing processes."
        )
        spec = get_strategy_spec("ddp")
    if accelerator not in spec.accelerators:
        errors.append(
            f"strategy={spec.name!r} does not run on accelerator={accelerator!r}; "
            f"it runs on: {', '.join(spec.accelerators)}"
        )
    if not spec.implemented:
        errors.append(
            f"strategy={spec.name!r} is registered but not implemented in this release; "
            "use 'ddp', 'ddp_spawn' or 'ddp_fork'"
        )
    if spec.requires and spec.requires not in inventory.installed:
        errors.append(
            f"strategy={spec.name!r} needs the {spec.requires!r} package, which is not installed: "
            f"pip install 'lite-strategies[{spec.extra}]'"
        )
    if spec.max_devices is not None and num_devices > spec.max_devices:
        errors.append(
            f"strategy={spec.name!r} uses at most {spec.max_devices} device(s), but devices selected "
            f"{num_devices}; use strategy='ddp' (or 'ddp_spawn'), or devices=1"
        )
    if num_devices < spec.min_devices:
        errors.append(f"strategy={spec.name!r} needs at least {spec.min_devices} devices, got {num_devices}")
    if not spec.multi_process and num_nodes > 1:
        errors.append(
            f"strategy={spec.name!r} runs in one process and cannot span num_nodes={num_nodes}; use strategy='ddp'"
        )
    if spec.launcher == "fork" and sys.platform == "win32":
        errors.append(
            f"strategy={spec.name!r} needs the 'fork' start method, which Windows lacks; use 'ddp_spawn'"
        )
    if (
        inventory.interactive
        and spec.launcher in ("script", "spawn")
        and not environment.creates_processes_externally
    ):
        errors.append(
            f"strategy={spec.name!r} cannot start processes from an interactive session (notebook/REPL); "
            "use strategy='ddp_fork' (alias 'ddp_notebook') or run a script"
        )
    return spec.name


def _precision_name(
    precision: Any,
    plugin: Precision | None,
    accelerator: str,
    inventory: Inventory,
    errors: list[str],
    warnings: list[str],
) -> str | None:
    if plugin is not None:
        return plugin.name
    try:
        name = canonical_precision(precision)
    except PrecisionError as err:
        errors.append(str(err))
        return None
    if name == "16-mixed" and accelerator == "cpu" and not inventory.cpu_fp16_autocast:
        warnings.append(
            "precision=16 needs float16 autocast, which this torch lacks on the CPU: using 'bf16-mixed' "
            "(as LightningLite did)."
        )
        return "bf16-mixed"
    return name


def _describe_flags(
    accelerator: Any, strategy: Any, devices: Any, num_nodes: Any, precision: Any, gpus: Any, tpu_cores: Any
) -> str:
    given: Mapping[str, Any] = {
        "accelerator": accelerator,
        "strategy": strategy,
        "devices": devices,
        "num_nodes": num_nodes if num_nodes != 1 else None,
        "precision": precision if precision != 32 else None,
        "gpus": gpus,
        "tpu_cores": tpu_cores,
    }
    return ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)


def _cpu_fp16_autocast() -> bool:
    try:
        get_precision("16-mixed", device_type="cpu")
    except PrecisionError:
        return False
    return True
