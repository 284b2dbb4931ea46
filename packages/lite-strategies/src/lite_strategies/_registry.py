"""The strategy registry: one row per strategy, read without importing any backend.

A row (:class:`StrategySpec`) holds everything the resolver and the :class:`Strategy` base
need before anything is built: the class and the keyword arguments it is built with, the
accelerators, precisions and device counts it accepts, the optional package it needs (with
its version floor), its launcher kind, the strategy it runs as in a known-compatible case,
and its own precision plugin where it needs one. :meth:`StrategySpec.problems` turns those
fields into every incompatibility of a configuration, as text, without building anything.

Rows come from three places, looked up in this order: the built-in rows below, rows given to
:func:`register_strategy`, and the entry points of group ``lite.strategies`` of the installed
distributions. Entry points are loaded only when a name is not found otherwise; each names a
:class:`StrategySpec`, an iterable of them, or a callable returning either.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from lite_strategies._errors import StrategyError

if TYPE_CHECKING:
    from lite_precision import Precision
    from lite_strategies._strategy import Strategy

#: The multiprocessing start methods a launcher kind may name (the only place they are listed).
START_METHODS = ("spawn", "fork")
#: Launcher kinds: None (the current process only), the script relaunch, a start method, torch_xla's.
LAUNCHERS = (None, "script", *START_METHODS, "xla")
#: The entry-point group third-party distributions register strategy rows under.
ENTRY_POINT_GROUP = "lite.strategies"


def _load_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class StrategySpec:
    """What the resolver and the strategy base know about a strategy without building it.

    Attributes:
        name: the canonical name (``strategy="..."``); ``aliases`` are other accepted spellings.
        factory: ``"module:Class"``, imported only by :meth:`load`.
        accelerators: the canonical accelerator names it runs on.
        launcher: how it starts processes (one of :data:`LAUNCHERS`; None: in the current one).
        multi_process: whether several processes take part (so it can span nodes).
        interactive: whether it works in a notebook / REPL (no script to re-run).
        init_kwargs: keyword arguments the row builds its class with (``stage=3`` for
            ``deepspeed_stage_3``); a row is a class plus these, so variants are rows, not classes.
        precisions: the canonical precisions it accepts anywhere (None: every one).
        precisions_on: accelerator -> the precisions it accepts there, narrower than ``precisions``.
        precision_note: why some precisions are refused, appended to that problem's text.
        precision_plugin: ``"module:callable"`` building the strategy's own precision plugin
            from ``(precision, device_type)``, for a strategy whose backend does the precision
            itself; None: lite_precision's mode, which must then run on the device.
        requires: the optional module it needs (found without importing it); ``extra`` the pip
            extra of lite-strategies that installs it; ``min_version`` the lowest version of the
            distribution ``distribution`` (default: ``requires``) it works with.
        min_devices / max_devices: how many devices per node it can use.
        runs_as: accelerator -> the strategy this row runs as there (``dp`` on the CPU runs as
            ``ddp``, as LightningLite did), reported as a warning by the resolver.
        runs_as_under_external_launcher: the strategy it runs as when processes were already
            started by an external launcher (a spawn/fork row becomes its script twin).
        description: one line for documentation and listings.
    """

    name: str
    factory: str
    accelerators: tuple[str, ...]
    launcher: str | None
    multi_process: bool
    interactive: bool
    aliases: tuple[str, ...] = ()
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    precisions: tuple[str, ...] | None = None
    precisions_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    precision_note: str = ""
    precision_plugin: str | None = None
    requires: str | None = None
    extra: str | None = None
    min_version: str | None = None
    distribution: str | None = None
    min_devices: int = 1
    max_devices: int | None = None
    runs_as: Mapping[str, str] = field(default_factory=dict)
    runs_as_under_external_launcher: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for text, what in ((self.factory, "factory"), (self.precision_plugin, "precision_plugin")):
            if text is not None and ":" not in text:
                form = "module:Class" if what == "factory" else "module:callable"
                raise StrategyError(f"StrategySpec {self.name!r}: {what} must be {form!r}, got {text!r}")
        if self.launcher not in LAUNCHERS:
            raise StrategyError(
                f"StrategySpec {self.name!r}: launcher {self.launcher!r} is not one of {list(LAUNCHERS)}"
            )
        if (self.requires is None) != (self.extra is None):
            raise StrategyError(f"StrategySpec {self.name!r}: set both requires and extra, or neither")
        if self.min_version is not None:
            try:
                Version(self.min_version)
            except InvalidVersion:
                raise StrategyError(
                    f"StrategySpec {self.name!r}: min_version {self.min_version!r} is not a version"
                ) from None
        # read-only views, so a row cannot be changed through them after registration
        for name in ("init_kwargs", "precisions_on", "runs_as"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def __reduce__(self) -> Any:  # MappingProxyType does not pickle; rebuild from plain dicts
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("init_kwargs", "precisions_on", "runs_as"):
            fields[name] = dict(fields[name])
        return (_rebuild_spec, (fields,))

    # ------------------------------------------------------------------ the optional backend
    @property
    def requirement(self) -> str | None:
        """The optional distribution this row needs, as ``"name>=floor"`` (None: none)."""
        if self.requires is None:
            return None
        dist = self.distribution or self.requires
        return f"{dist}>={self.min_version}" if self.min_version else dist

    def backend_problem(self) -> str | None:
        """Why the optional backend cannot be used here (missing, or older than the floor); None if it can.

        Like lightning-utilities' ``RequirementCache``: the module is found and the installed
        distribution's version compared, without importing the backend.
        """
        if self.requires is None:
            return None
        install = f"pip install 'lite-strategies[{self.extra}]'"
        if importlib.util.find_spec(self.requires) is None:
            return f"strategy {self.name!r} needs {self.requirement!r}, which is not installed: {install}"
        if self.min_version is None:
            return None
        dist = self.distribution or self.requires
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None  # importable without distribution metadata (a source checkout): trust it
        try:
            too_old = Version(found) < Version(self.min_version)
        except InvalidVersion:
            return None
        if too_old:
            return f"strategy {self.name!r} needs {self.requirement!r}, but {dist} {found} is installed: {install}"
        return None

    def is_available(self) -> bool:
        """Whether the optional backend this row needs (if any) is installed and new enough; imports nothing."""
        return self.backend_problem() is None

    # ------------------------------------------------------------------ compatibility
    def accepted_precisions(self, accelerator: str) -> tuple[str, ...] | None:
        """The precisions this row accepts on ``accelerator`` (None: every one)."""
        return self.precisions_on.get(accelerator, self.precisions)

    def problems(
        self,
        *,
        accelerator: str,
        precision: str | None = None,
        num_devices: int = 1,
        num_nodes: int = 1,
        installed: Collection[str] | None = None,
        platform: str = sys.platform,
        interactive: bool = False,
        external_launcher: bool = False,
    ) -> list[str]:
        """Every reason this row cannot run the configuration, as text; builds and imports nothing.

        ``precision`` is a canonical name (None: not checked). ``installed`` is the set of
        optional modules known to be usable (None: look at this machine). ``interactive``
        and ``external_launcher`` describe the process (a notebook; ranks started by torchrun,
        SLURM, ...). The resolver and :class:`Strategy` both call this: the checks exist here only.
        """
        name = repr(self.name)
        found: list[str] = []
        if accelerator not in self.accelerators:
            found.append(
                f"strategy {name} cannot run on accelerator {accelerator!r}; "
                f"it runs on: {', '.join(self.accelerators)}"
            )
        accepted = self.accepted_precisions(accelerator)
        if precision is not None and accepted is not None and precision not in accepted:
            note = f" ({self.precision_note})" if self.precision_note else ""
            found.append(
                f"strategy {name} cannot run precision={precision!r} on {accelerator!r}; "
                f"it runs: {', '.join(accepted)}{note}"
            )
        if self.requires is not None:
            if installed is None:
                problem = self.backend_problem()
                if problem is not None:
                    found.append(problem)
            elif self.requires not in installed:
                found.append(
                    f"strategy {name} needs {self.requirement!r}, which is not installed: "
                    f"pip install 'lite-strategies[{self.extra}]'"
                )
        if self.max_devices is not None and num_devices > self.max_devices:
            found.append(
                f"strategy {name} uses at most {self.max_devices} device(s), but {num_devices} were selected; "
                "use strategy='ddp' (or 'ddp_spawn'), or devices=1"
            )
        if num_devices < self.min_devices:
            found.append(f"strategy {name} needs at least {self.min_devices} devices, got {num_devices}")
        if num_nodes > 1 and not self.multi_process:
            found.append(
                f"strategy {name} runs in one process and cannot use num_nodes={num_nodes}; use strategy='ddp'"
            )
        if self.launcher == "fork" and platform == "win32":
            found.append(
                f"strategy {name} needs the 'fork' start method, which Windows lacks; use 'ddp_spawn'"
            )
        if interactive and not self.interactive and self.launcher is not None and not external_launcher:
            found.append(
                f"strategy {name} cannot start processes from an interactive session (notebook/REPL); "
                "use strategy='ddp_fork' (alias 'ddp_notebook') or run a script"
            )
        return found

    # ------------------------------------------------------------------ building
    def load(self, *, check_backend: bool = True) -> type[Strategy]:
        """Import and return the strategy class; a missing backend raises :class:`StrategyError`.

        ``check_backend=False`` returns the class even without its backend (its module imports
        the backend lazily), so that e.g. a seed-compatible import line works everywhere.
        """
        if check_backend:
            problem = self.backend_problem()
            if problem is not None:
                raise StrategyError(problem)
        cls: type[Strategy] = _load_object(self.factory)
        return cls

    def build(self, **settings: Any) -> Strategy:
        """Build this row's strategy: its class with :attr:`init_kwargs`, then ``settings``.

        The strategy keeps the row's name (``strategy.strategy_name``), so its launcher kind and
        checks are this row's even when several rows share one class.
        """
        return self.load().from_spec(self, **settings)

    def make_precision(self, precision: str, device_type: str) -> Precision:
        """The precision plugin this row runs ``precision`` with on ``device_type``."""
        if self.precision_plugin is None:
            from lite_precision import get_precision

            return get_precision(precision, device_type)
        factory: Callable[[str, str], Precision] = _load_object(self.precision_plugin)
        return factory(precision, device_type)


def _rebuild_spec(fields: dict[str, Any]) -> StrategySpec:
    return StrategySpec(**fields)


_DDP_LIKE: dict[str, Any] = dict(accelerators=("cpu", "cuda"), multi_process=True, interactive=False)
_DEEPSPEED: dict[str, Any] = dict(
    _DDP_LIKE,
    factory="lite_strategies._deepspeed:DeepSpeedStrategy",
    launcher="script",
    precisions=("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"),
    precision_note="DeepSpeed has no float64 mode",
    precision_plugin="lite_strategies._backend_precision:deepspeed_precision",
    requires="deepspeed",
    extra="deepspeed",
    min_version="0.14",
)
_SHARDED: dict[str, Any] = dict(
    _DDP_LIKE,
    factory="lite_strategies._sharded:DDPShardedStrategy",
    precisions_on={"cpu": ("64-true", "32-true", "bf16-mixed", "16-true", "bf16-true")},
    precision_note="loss scaling with sharded gradients needs fairscale's ShardedGradScaler, which only runs on "
    "CUDA; use precision='bf16-mixed' or '32-true' on the CPU",
    requires="fairscale",
    extra="fairscale",
    min_version="0.4.13",
)

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
        runs_as={"cpu": "ddp"},
        description="torch.nn.DataParallel: one process driving several CUDA devices.",
    ),
    StrategySpec(
        name="ddp",
        factory="lite_strategies._ddp:DDPStrategy",
        launcher="script",
        **_DDP_LIKE,
        description="DistributedDataParallel; re-runs the script once per extra local process.",
    ),
    StrategySpec(
        name="ddp_spawn",
        factory="lite_strategies._ddp:DDPStrategy",
        launcher="spawn",
        runs_as_under_external_launcher="ddp",
        **_DDP_LIKE,
        description="DistributedDataParallel in processes started with multiprocessing 'spawn'.",
    ),
    StrategySpec(
        name="ddp_fork",
        aliases=("ddp_notebook",),
        factory="lite_strategies._ddp:DDPStrategy",
        accelerators=("cpu", "cuda"),
        launcher="fork",
        multi_process=True,
        interactive=True,
        runs_as_under_external_launcher="ddp",
        description="DistributedDataParallel in processes started with 'fork' (notebooks).",
    ),
    StrategySpec(
        name="deepspeed",
        **_DEEPSPEED,
        description="DeepSpeed ZeRO, stage 2 by default (stage, config, offload are arguments).",
    ),
    StrategySpec(
        name="deepspeed_stage_1",
        init_kwargs={"stage": 1},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 1: optimizer states sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2",
        init_kwargs={"stage": 2},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 2: optimizer states and gradients sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2_offload",
        init_kwargs={"stage": 2, "offload_optimizer": True},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 2 with the optimizer offloaded to the CPU.",
    ),
    StrategySpec(
        name="deepspeed_stage_3",
        init_kwargs={"stage": 3},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 3: optimizer states, gradients and parameters sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_3_offload",
        init_kwargs={"stage": 3, "offload_optimizer": True, "offload_parameters": True},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 3 with optimizer and parameters offloaded to the CPU.",
    ),
    StrategySpec(
        name="ddp_sharded",
        launcher="script",
        **_SHARDED,
        description="fairscale ShardedDataParallel with an OSS sharded optimizer.",
    ),
    StrategySpec(
        name="ddp_sharded_spawn",
        launcher="spawn",
        runs_as_under_external_launcher="ddp_sharded",
        **_SHARDED,
        description="ddp_sharded in processes started with 'spawn'.",
    ),
    StrategySpec(
        name="fsdp",
        factory="lite_strategies._fsdp:FSDPStrategy",
        launcher="script",
        **_DDP_LIKE,
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
        precisions=("32-true", "bf16-true"),
        precision_note="bf16-true keeps the weights in bfloat16, as TPUs compute natively",
        requires="torch_xla",
        extra="xla",
        description="torch_xla on TPU cores (XLA:CPU with PJRT_DEVICE=CPU), processes started by torch_xla's launcher.",
    ),
)


@dataclass(frozen=True)
class DefaultRule:
    """One rule of :data:`DEFAULT_STRATEGY`: ``strategy`` when every condition given matches (None: any)."""

    strategy: str
    accelerator: str | None = None
    one_process: bool | None = None
    external_launcher: bool | None = None
    interactive: bool | None = None

    def matches(
        self, *, accelerator: str, one_process: bool, external_launcher: bool, interactive: bool
    ) -> bool:
        asked = (accelerator, one_process, external_launcher, interactive)
        wanted = (self.accelerator, self.one_process, self.external_launcher, self.interactive)
        return all(want is None or want == have for want, have in zip(wanted, asked))


#: The strategy used when none is named: the first rule that matches wins.
DEFAULT_STRATEGY: tuple[DefaultRule, ...] = (
    DefaultRule("xla", accelerator="xla"),  # one strategy runs one or many XLA devices
    DefaultRule("single_device", one_process=True),
    DefaultRule("ddp", external_launcher=True),  # torchrun, SLURM, ... started the processes
    DefaultRule("ddp_fork", interactive=True),  # a notebook has no script to re-run
    DefaultRule("ddp_spawn"),
)


def default_strategy(
    *, accelerator: str, world_size: int, external_launcher: bool = False, interactive: bool = False
) -> str:
    """The name of the strategy :data:`DEFAULT_STRATEGY` picks for this configuration.

    >>> default_strategy(accelerator="cpu", world_size=2)
    'ddp_spawn'
    """
    for rule in DEFAULT_STRATEGY:
        if rule.matches(
            accelerator=accelerator,
            one_process=world_size <= 1,
            external_launcher=external_launcher,
            interactive=interactive,
        ):
            return rule.strategy
    raise StrategyError(
        f"no default strategy rule matches accelerator={accelerator!r}"
    )  # the last one always does


# ---------------------------------------------------------------------- the open registry
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
"""The built-in rows, by canonical name (rows registered later are in :func:`strategy_specs`)."""

_BUILTIN = "lite_strategies"
_lock = threading.Lock()
_lookup: dict[str, StrategySpec] = {}  # every accepted spelling (lower case) -> row
_provider: dict[str, str] = {}  # canonical name -> who registered it
_entry_points_loaded = False


def _add(spec: StrategySpec, provider: str) -> None:
    if not isinstance(spec, StrategySpec):
        raise StrategyError(f"{provider} registered {spec!r}, which is not a StrategySpec")
    keys = [key.lower() for key in (spec.name, *spec.aliases)]
    for key in keys:
        taken = _lookup.get(key)
        if taken is not None:
            raise StrategyError(
                f"strategy name {key!r} of {provider} (row {spec.name!r}) is already used by "
                f"{_provider[taken.name]} (row {taken.name!r}); rename one"
            )
    for key in keys:
        _lookup[key] = spec
    _provider[spec.name] = provider


for _spec in _ROWS:
    _add(_spec, _BUILTIN)


def register_strategy(
    spec: StrategySpec | type[Strategy], *, provider: str | None = None, **fields: Any
) -> StrategySpec:
    """Add a row to the registry, so that ``strategy=<its name>`` (or an alias) builds it; returns it.

    ``spec`` is a :class:`StrategySpec`, or a :class:`Strategy` subclass that sets its own
    ``strategy_name``: its row is then the row of the nearest base class with a row, renamed,
    pointing at the subclass, with ``fields`` (any :class:`StrategySpec` field) changed::

        class Mine(DDPStrategy):
            strategy_name = "mine"

        register_strategy(Mine, description="DDP with my own wrapper")

    ``provider`` names who registers it in errors (default: the top-level module of the row's
    factory). A name or alias already taken raises :class:`StrategyError` naming both providers.
    """
    if isinstance(spec, type):
        spec = _spec_of_class(spec, fields)
    elif fields:
        spec = dataclasses.replace(spec, **fields)
    with _lock:
        _add(spec, provider or spec.factory.partition(":")[0].split(".")[0])
    return spec


def _spec_of_class(cls: type[Strategy], fields: Mapping[str, Any]) -> StrategySpec:
    name = getattr(cls, "strategy_name", None)
    parent = next(
        (
            _lookup[base.strategy_name]
            for base in cls.__mro__[1:]
            if isinstance(getattr(base, "strategy_name", None), str) and base.strategy_name in _lookup
        ),
        None,
    )
    if not isinstance(name, str) or parent is None or name == parent.name:
        raise StrategyError(
            f"register_strategy({cls.__name__}): a strategy class must subclass a registered strategy "
            f"and set its own strategy_name (got {name!r}); or pass a StrategySpec"
        )
    row: dict[str, Any] = dict(
        name=name, aliases=(), factory=f"{cls.__module__}:{cls.__qualname__}", init_kwargs={}, description=""
    )
    row.update(fields)
    return dataclasses.replace(parent, **row)


def _specs_of(obj: Any) -> list[StrategySpec]:
    if callable(obj) and not isinstance(obj, StrategySpec):
        obj = obj()
    return [obj] if isinstance(obj, StrategySpec) else list(obj)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(entry_point, "dist", None)
            provider = f"{dist.name} (entry point {entry_point.name!r})" if dist else repr(entry_point.value)
            try:
                specs = _specs_of(entry_point.load())
            except Exception as err:
                raise StrategyError(
                    f"the {ENTRY_POINT_GROUP!r} entry point {entry_point.value!r} of {provider} failed to load: "
                    f"{type(err).__name__}: {err}"
                ) from err
            for spec in specs:
                if _provider.get(spec.name) == provider and _lookup.get(spec.name) == spec:
                    continue  # the same row listed twice by one distribution
                _add(spec, provider)


def strategy_specs(*, entry_points: bool = True) -> Mapping[str, StrategySpec]:
    """Every row known (built-in, registered, and those of installed entry points), by name.

    ``entry_points=False`` leaves the entry points unloaded (if they were not yet): the rows known now.
    """
    if entry_points:
        _load_entry_points()
    return MappingProxyType({spec.name: spec for spec in _lookup.values()})


def strategy_provider(name: str) -> str:
    """Who registered the row ``name`` (``lite_strategies`` for the built-in ones)."""
    return _provider[get_strategy_spec(name).name]


def get_strategy_spec(name: str) -> StrategySpec:
    """Return the spec for ``name`` (case-insensitive; aliases accepted).

    A name not registered in code makes the ``lite.strategies`` entry points load once.

    >>> get_strategy_spec("ddp_notebook").name
    'ddp_fork'
    """
    if not isinstance(name, str):
        raise StrategyError(f"strategy name must be a string, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    spec = _lookup.get(key)
    if spec is None and not _entry_points_loaded:
        _load_entry_points()
        spec = _lookup.get(key)
    if spec is None:
        raise StrategyError(f"unknown strategy {name!r}; accepted names: {', '.join(sorted(_lookup))}")
    return spec
