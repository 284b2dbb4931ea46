"""What the resolver reads ([`Inventory`][lite_facade.Inventory]) and what it returns ([`Plan`][lite_facade.Plan])."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from lite_collectives import ClusterEnvironment, detect_environment
from lite_devices import ACCELERATORS, available_accelerators
from lite_precision import PRECISIONS, Precision
from lite_strategies import CheckpointIO, Strategy, strategy_specs


class LiteConfigurationError(ValueError):
    """The flags given to ``LightningLite`` cannot work on this machine; the message lists why."""


@dataclass(frozen=True)
class Inventory:
    """What the resolver may know about the machine and the process, gathered once by [`detect`][lite_facade.Inventory.detect].

    Attributes:
        device_counts: canonical accelerator name -> how many devices of it this machine has.
        installed: the optional backends usable here (module names: ``deepspeed``, ``fairscale``, ...).
        environment: the cluster environment detected from the environment variables.
        interactive: whether this runs in a notebook / interactive interpreter (no script to re-run).
        cpu_fp16_autocast: whether this torch can autocast to float16 on the CPU.
        platform: ``sys.platform`` (Windows has no 'fork').
        max_cpu_processes: the most CPU processes one node may run (8 per core; more only contend).
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
        """Look at this machine and process now: devices, installed backends, cluster environment."""
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
