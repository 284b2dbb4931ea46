"""The strategy registry: one row per strategy, read without importing any backend."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from lite_strategies._errors import StrategyError

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

_LAUNCHERS = (None, "script", "spawn", "fork", "xla")


@dataclass(frozen=True)
class StrategySpec:
    """What a resolver needs to know about a strategy without building it.

    ``factory`` is ``"module:Class"``, imported only by :meth:`load`. ``accelerators`` are the
    canonical accelerator names it accepts; ``launcher`` how it starts processes (None: it
    runs in the current process only); ``interactive`` whether it works in a notebook;
    ``requires`` the optional module it needs and ``extra`` the pip extra that installs it; ``min_devices``/``max_devices`` bound how many
    devices (per node) it can use; ``implemented`` is False for a row registered ahead of its
    backend (building it raises).
    """

    name: str
    aliases: tuple[str, ...]
    factory: str
    accelerators: tuple[str, ...]
    launcher: str | None
    multi_process: bool
    interactive: bool
    requires: str | None = None
    extra: str | None = None
    min_devices: int = 1
    max_devices: int | None = None
    implemented: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if ":" not in self.factory:
            raise StrategyError(
                f"StrategySpec {self.name!r}: factory must be 'module:Class', got {self.factory!r}"
            )
        if self.launcher not in _LAUNCHERS:
            raise StrategyError(
                f"StrategySpec {self.name!r}: launcher {self.launcher!r} is not one of {list(_LAUNCHERS)}"
            )
        if (self.requires is None) != (self.extra is None):
            raise StrategyError(f"StrategySpec {self.name!r}: set both requires and extra, or neither")

    def is_available(self) -> bool:
        """Whether the optional module this strategy needs (if any) is installed; imports nothing."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def load(self, *, check_backend: bool = True) -> type[Strategy]:
        """Import and return the strategy class; a missing backend raises :class:`StrategyError`.

        ``check_backend=False`` returns the class even without its backend (its module imports
        the backend lazily), so that e.g. a seed-compatible import line works everywhere.
        """
        if check_backend and not self.is_available():
            raise StrategyError(
                f"strategy {self.name!r} needs the optional module {self.requires!r}, which is not "
                f"installed: pip install 'lite-strategies[{self.extra}]'"
            )
        module_name, _, class_name = self.factory.partition(":")
        cls: type[Strategy] = getattr(importlib.import_module(module_name), class_name)
        return cls


_ROWS = (
    StrategySpec(
        name="single_device",
        aliases=("single",),
        factory="lite_strategies._single_device:SingleDeviceStrategy",
        accelerators=("cpu", "cuda", "mps"),
        launcher=None,
        multi_process=False,
        interactive=True,
        max_devices=1,
        description="One process, one device.",
    ),
    StrategySpec(
        name="dp",
        aliases=("data_parallel",),
        factory="lite_strategies._dp:DataParallelStrategy",
        accelerators=("cuda",),
        launcher=None,
        multi_process=False,
        interactive=True,
        description="torch.nn.DataParallel: one process driving several CUDA devices.",
    ),
    StrategySpec(
        name="ddp",
        aliases=(),
        factory="lite_strategies._ddp:DDPStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        description="DistributedDataParallel; re-runs the script once per extra local process.",
    ),
    StrategySpec(
        name="ddp_spawn",
        aliases=(),
        factory="lite_strategies._ddp:DDPSpawnStrategy",
        accelerators=("cpu", "cuda"),
        launcher="spawn",
        multi_process=True,
        interactive=False,
        description="DistributedDataParallel in processes started with multiprocessing 'spawn'.",
    ),
    StrategySpec(
        name="ddp_fork",
        aliases=("ddp_notebook",),
        factory="lite_strategies._ddp:DDPForkStrategy",
        accelerators=("cpu", "cuda"),
        launcher="fork",
        multi_process=True,
        interactive=True,
        description="DistributedDataParallel in processes started with 'fork' (notebooks).",
    ),
    StrategySpec(
        name="deepspeed",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO, stage 2 by default (stage, config, offload are arguments).",
    ),
    StrategySpec(
        name="deepspeed_stage_1",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStage1Strategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO stage 1: optimizer states sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStage2Strategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO stage 2: optimizer states and gradients sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2_offload",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStage2OffloadStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO stage 2 with the optimizer offloaded to the CPU.",
    ),
    StrategySpec(
        name="deepspeed_stage_3",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStage3Strategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO stage 3: optimizer states, gradients and parameters sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_3_offload",
        aliases=(),
        factory="lite_strategies.deepspeed:DeepSpeedStage3OffloadStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="deepspeed",
        extra="deepspeed",
        description="DeepSpeed ZeRO stage 3 with optimizer and parameters offloaded to the CPU.",
    ),
    StrategySpec(
        name="ddp_sharded",
        aliases=(),
        factory="lite_strategies._sharded:DDPShardedStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        requires="fairscale",
        extra="fairscale",
        description="fairscale ShardedDataParallel with an OSS sharded optimizer.",
    ),
    StrategySpec(
        name="ddp_sharded_spawn",
        aliases=(),
        factory="lite_strategies._sharded:DDPShardedSpawnStrategy",
        accelerators=("cpu", "cuda"),
        launcher="spawn",
        multi_process=True,
        interactive=False,
        requires="fairscale",
        extra="fairscale",
        description="ddp_sharded in processes started with 'spawn'.",
    ),
    StrategySpec(
        name="fsdp",
        aliases=(),
        factory="lite_strategies.fsdp:FSDPStrategy",
        accelerators=("cpu", "cuda"),
        launcher="script",
        multi_process=True,
        interactive=False,
        description="torch FSDP2 (fully_shard): parameters, gradients and optimizer state sharded; "
        "optimizers rebuilt over the shards.",
    ),
    StrategySpec(
        name="xla",
        aliases=("tpu_spawn", "xla_spawn"),
        factory="lite_strategies._xla:XLAStrategy",
        accelerators=("xla",),
        launcher="xla",
        multi_process=True,
        interactive=False,
        requires="torch_xla",
        extra="xla",
        description="torch_xla on TPU cores (XLA:CPU with PJRT_DEVICE=CPU), processes started by torch_xla's launcher.",
    ),
)


def build_registry(rows: Iterable[StrategySpec]) -> Mapping[str, StrategySpec]:
    """Index ``rows`` by canonical name; a name or alias used twice raises, naming both rows."""
    by_name: dict[str, StrategySpec] = {}
    owner: dict[str, str] = {}
    for spec in rows:
        for key in (spec.name, *spec.aliases):
            key = key.lower()
            if key in owner:
                raise StrategyError(
                    f"strategy name {key!r} is used by both {owner[key]!r} and {spec.name!r}; rename one"
                )
            owner[key] = spec.name
        by_name[spec.name] = spec
    return MappingProxyType(by_name)


STRATEGIES: Mapping[str, StrategySpec] = build_registry(_ROWS)
_LOOKUP = {key.lower(): spec for spec in STRATEGIES.values() for key in (spec.name, *spec.aliases)}


def get_strategy_spec(name: str) -> StrategySpec:
    """Return the spec for ``name`` (case-insensitive; aliases accepted).

    >>> get_strategy_spec("ddp_notebook").name
    'ddp_fork'
    """
    if not isinstance(name, str):
        raise StrategyError(f"strategy name must be a string, got {type(name).__name__}: {name!r}")
    spec = _LOOKUP.get(name.strip().lower())
    if spec is None:
        names = sorted(_LOOKUP)
        raise StrategyError(f"unknown strategy {name!r}; accepted names: {', '.join(names)}")
    return spec
