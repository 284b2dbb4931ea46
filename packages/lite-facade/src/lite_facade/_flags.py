"""Step 1 of the resolver: ``LightningLite``'s flags as canonical values, each problem recorded as text."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from lite_collectives import ClusterEnvironment
from lite_devices import DeviceError, DeviceSelection, get_accelerator, parse_devices
from lite_facade._plan import Inventory
from lite_precision import Precision, PrecisionError, canonical_precision
from lite_strategies import CheckpointIO, Strategy

_PLUGIN_KINDS = {"cluster environment": ClusterEnvironment, "precision plugin": Precision,
                 "checkpoint IO": CheckpointIO, "strategy": Strategy}  # fmt: skip


@dataclass
class Flags:
    """The flags after `normalize`: canonical values (a placeholder where a problem was recorded)."""

    accelerator: str
    selection: DeviceSelection | None
    num_nodes: int
    strategy: Any
    precision: str | None
    environment: ClusterEnvironment
    plugins: dict[str, Any]

    @property
    def devices(self) -> tuple[torch.device, ...]:
        return self.selection.devices if self.selection else (torch.device("cpu"),)


def normalize(given: dict[str, Any], inventory: Inventory, problems: list[str]) -> Flags:
    """Step 1: sort the plugins by kind, check num_nodes, parse devices and precision."""
    found: dict[str, Any] = {}
    plugins = given["plugins"]
    for item in [] if plugins is None else plugins if isinstance(plugins, (list, tuple)) else [plugins]:
        kind = next((kind for kind, cls in _PLUGIN_KINDS.items() if isinstance(item, cls)), None)
        if kind is None:
            problems.append(
                f"plugins holds {item!r}, which is none of: a ClusterEnvironment, a precision plugin, a CheckpointIO or a strategy object"
            )
        elif kind in found:
            problems.append(
                f"plugins holds two {kind}s ({type(found[kind]).__name__} and {type(item).__name__}); pass one of each kind at most"
            )
        else:
            found[kind] = item
    strategy = given["strategy"]
    if "strategy" in found:
        if strategy is not None:
            problems.append(
                "a strategy was given both as `strategy=` and in `plugins`; pass it once, as `strategy=`"
            )
        strategy = found.pop("strategy")
    num_nodes = given["num_nodes"]
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        problems.append(f"num_nodes={num_nodes!r}: must be an int >= 1 (the number of machines taking part)")
        num_nodes = 1
    plugin, precision = found.get("precision plugin"), None
    try:
        precision = canonical_precision(given["precision"])
        if plugin is not None and given["precision"] != 32 and precision != plugin.name:
            problems.append(
                f"precision={given['precision']!r} and the precision plugin {plugin!r} disagree; pass one of them"
            )
    except PrecisionError as err:
        problems.append(str(err))
    selection = _parse_devices(given, inventory, problems)
    try:
        fallback = (
            "cuda"
            if given["gpus"] is not None
            else "xla"
            if given["tpu_cores"] is not None
            else get_accelerator(given["accelerator"] or "cpu").name
        )
    except DeviceError:
        fallback = "cpu"  # already reported by _parse_devices
    return Flags(
        accelerator=selection.accelerator if selection else fallback,
        selection=selection,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=plugin.name if plugin is not None else precision,
        environment=found.get("cluster environment") or inventory.environment,
        plugins=found,
    )


def _parse_devices(
    given: dict[str, Any], inventory: Inventory, problems: list[str]
) -> DeviceSelection | None:
    accelerator, devices, gpus, tpu_cores = (
        given[k] for k in ("accelerator", "devices", "gpus", "tpu_cores")
    )
    asked = devices if devices is not None else gpus if gpus is not None else tpu_cores
    count = int(asked) if isinstance(asked, numbers.Integral) or str(asked).strip().isdigit() else 0
    cpu = inventory.max_cpu_processes
    if count > (cpu if accelerator == "cpu" else max(cpu, *inventory.device_counts.values())):
        # refused before parsing, which builds one object per device
        problems.append(
            f"devices={asked!r}: more than this machine holds (at most {cpu} CPU processes, 8 per core; devices: {dict(inventory.device_counts)})"
        )
        return None
    if accelerator is None:
        accelerator = "cpu" if gpus is None and tpu_cores is None else "auto"
    try:
        return parse_devices(
            devices, accelerator, gpus=gpus, tpu_cores=tpu_cores, device_counts=inventory.device_counts
        )
    except DeviceError as err:
        problems.append(str(err))
        return None
