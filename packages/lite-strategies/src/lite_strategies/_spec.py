"""A strategy's registry row: what the resolver and the strategy base know before building anything.

A row ([`StrategySpec`][lite_strategies.StrategySpec]) holds the class and the keyword arguments it is built with, the
accelerators, precisions and device counts it accepts, the optional package it needs (with its
version floor), its launcher kind, the strategy it runs as in a known-compatible case, and its
own precision plugin where it needs one. [`StrategySpec.problems`][lite_strategies.StrategySpec.problems] turns those fields into
every incompatibility of a configuration, as text, without building or importing anything.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from lite_strategies._errors import StrategyError

if TYPE_CHECKING:
    from lite_precision import Precision
    from lite_strategies._strategy import Strategy

START_METHODS = ("spawn", "fork")
"""The multiprocessing start methods a launcher kind may name (the only place they are listed)."""
LAUNCHERS = (None, "script", *START_METHODS, "xla")
"""Launcher kinds: None (the current process only), the script relaunch, a start method, torch_xla's."""
ENTRY_POINT_GROUP = "lite.strategies"
"""The entry-point group third-party distributions register strategy rows under."""


def _load_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class StrategySpec:
    """What the resolver and the strategy base know about a strategy without building it.

    Attributes:
        name: the canonical name (``strategy="..."``); ``aliases`` are other accepted spellings.
        factory: ``"module:Class"``, imported only by [`load`][lite_strategies.StrategySpec.load].
        accelerators: the canonical accelerator names it runs on.
        launcher: how it starts processes (one of [`LAUNCHERS`][lite_strategies.LAUNCHERS]; None: in the current one).
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
        install = self._install_hint()
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

    def _install_hint(self) -> str:
        """The command that installs the backend: the third-party package itself, which works from a
        checkout as well as once lite is on the package index (where the extra pulls the same in)."""
        return f"pip install '{self.requirement}' (what the extra lite-strategies[{self.extra}] installs)"

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
        SLURM, ...). The resolver and [`Strategy`][lite_strategies.Strategy] both call this: the checks exist here only.
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
                    f"strategy {name} needs {self.requirement!r}, which is not installed: {self._install_hint()}"
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

    def runs_instead(
        self, *, accelerator: str, external_launcher: str | None = None
    ) -> tuple[str, str] | None:
        """``(strategy, why)`` when this row runs as another one (its ``runs_as`` fields), else None.

        ``external_launcher`` names what already started the processes (e.g. ``"TorchElasticEnvironment"``).
        """
        if accelerator in self.runs_as:
            return self.runs_as[accelerator], f"does not run on {accelerator!r}"
        if external_launcher is not None and self.runs_as_under_external_launcher is not None:
            why = f"would start processes, but {external_launcher} already started them"
            return self.runs_as_under_external_launcher, why
        return None

    # ------------------------------------------------------------------ building
    def load(self, *, check_backend: bool = True) -> type[Strategy]:
        """Import and return the strategy class; a missing backend raises [`StrategyError`][lite_strategies.StrategyError].

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
        """Build this row's strategy: its class with `init_kwargs`, then ``settings``.

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
