"""The open strategy registry: built-in rows, rows registered in code, and entry points.

Names are looked up in this order: the built-in rows (`lite_strategies._rows`), rows given
to [`register_strategy`][lite_strategies.register_strategy], and the entry points of group ``lite.strategies`` of the installed
distributions. Entry points are loaded only when a name is not found otherwise; each names a
[`StrategySpec`][lite_strategies.StrategySpec], an iterable of them, or a callable returning either. A name or alias
registered twice raises, naming both providers.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lite_strategies._errors import StrategyError
from lite_strategies._rows import DEFAULT_STRATEGY, ROWS, DefaultRule, default_strategy
from lite_strategies._spec import ENTRY_POINT_GROUP, LAUNCHERS, START_METHODS, StrategySpec

if TYPE_CHECKING:
    from lite_strategies._strategy import Strategy

__all__ = [
    "DEFAULT_STRATEGY",
    "ENTRY_POINT_GROUP",
    "LAUNCHERS",
    "START_METHODS",
    "STRATEGIES",
    "DefaultRule",
    "StrategySpec",
    "build_registry",
    "default_strategy",
    "get_strategy_spec",
    "register_strategy",
    "strategy_provider",
    "strategy_specs",
]


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


STRATEGIES: Mapping[str, StrategySpec] = build_registry(ROWS)
"""The built-in rows, by canonical name (rows registered later are in [`strategy_specs`][lite_strategies.strategy_specs])."""

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


for _spec in ROWS:
    _add(_spec, _BUILTIN)


def register_strategy(
    spec: StrategySpec | type[Strategy], *, provider: str | None = None, **fields: Any
) -> StrategySpec:
    """Add a row to the registry, so that ``strategy=<its name>`` (or an alias) builds it; returns it.

    ``spec`` is a [`StrategySpec`][lite_strategies.StrategySpec], or a [`Strategy`][lite_strategies.Strategy] subclass that sets its own
    ``strategy_name``: its row is then the row of the nearest base class with a row, renamed,
    pointing at the subclass, with ``fields`` (any [`StrategySpec`][lite_strategies.StrategySpec] field) changed.

    ``provider`` names who registers it in errors (default: the top-level module of the row's
    factory). A name or alias already taken raises [`StrategyError`][lite_strategies.StrategyError] naming both providers.

    Examples:
        ```python
        class Mine(DDPStrategy):
            strategy_name = "mine"

        register_strategy(Mine, description="DDP with my own wrapper")
        ```
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
    names = [getattr(base, "strategy_name", None) for base in cls.__mro__[1:]]
    parent = next((_lookup[n] for n in names if isinstance(n, str) and n in _lookup), None)
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

    Examples:
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
