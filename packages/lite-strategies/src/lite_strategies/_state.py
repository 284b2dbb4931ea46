"""The one walk over a checkpoint's state, and the one check of a checkpoint against the state to load.

A state is a tree of dicts, lists and tuples (named tuples are values, as torch.save keeps them)
whose leaves are modules, optimizers, other stateful objects (anything with ``state_dict`` and
``load_state_dict``, e.g. an LR scheduler) and plain values. Every strategy saves and loads
through [`map_state`][lite_strategies.map_state], `saved_form`, `check_checkpoint` and `restore_state`;
the backends differ only in the callbacks they pass (DDP's full state dicts, FSDP's shards,
DeepSpeed's engines).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from torch import nn
from torch.optim import Optimizer

from lite_strategies._errors import CheckpointError

#: Where a leaf sits in a state: the keys and indices from the top (``("optimizers", 0)``).
StatePath = tuple[Any, ...]
_PathLike = str | os.PathLike[str]


def map_state(
    state: Any,
    fn: Callable[[Any, StatePath], Any],
    *,
    is_leaf: Callable[[Any], bool] | None = None,
    path: StatePath = (),
) -> Any:
    """``state`` rebuilt with every leaf replaced by ``fn(leaf, path)``.

    Dicts (rebuilt as plain dicts, in their order), lists and tuples are walked; anything else,
    named tuples included, is a leaf, and so is a container for which ``is_leaf`` returns True.

    Examples:
        >>> map_state({"a": [1, 2], "b": (3,)}, lambda value, path: (path, value))
        {'a': [(('a', 0), 1), (('a', 1), 2)], 'b': ((('b', 0), 3),)}
    """
    if is_leaf is not None and is_leaf(state):
        return fn(state, path)
    if isinstance(state, dict):
        return {key: map_state(value, fn, is_leaf=is_leaf, path=(*path, key)) for key, value in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(
            map_state(value, fn, is_leaf=is_leaf, path=(*path, index)) for index, value in enumerate(state)
        )
    return fn(state, path)


def state_leaves(state: Any) -> list[Any]:
    """Every leaf of ``state`` (see [`map_state`][lite_strategies.map_state]), in order."""
    found: list[Any] = []
    map_state(state, lambda value, _: found.append(value))
    return found


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` saves as its ``state_dict()`` and loads with ``load_state_dict`` (modules and optimizers too)."""
    return (
        not isinstance(obj, type)
        and callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    )


def saved_form(
    state: Any,
    on_module: Callable[[nn.Module, StatePath], Any],
    on_optimizer: Callable[[Optimizer, StatePath], Any],
) -> Any:
    """``state`` as it is written: modules and optimizers through ``on_*(obj, path)``, other stateful
    objects as their ``state_dict()``, plain values as they are."""

    def convert(value: Any, path: StatePath) -> Any:
        if isinstance(value, nn.Module):
            return on_module(value, path)
        if isinstance(value, Optimizer):
            return on_optimizer(value, path)
        if is_stateful(value):
            return value.state_dict()
        return value

    return map_state(state, convert)


def check_checkpoint(path: _PathLike, checkpoint: Any, wanted: Iterable[Any]) -> None:
    """Raise [`CheckpointError`][lite_strategies.CheckpointError] unless ``checkpoint`` is a mapping holding every key of ``wanted``."""
    wanted = list(wanted)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{os.fspath(path)!r} holds a {type(checkpoint).__name__}, not a dict: it cannot be loaded into "
            f"the state {sorted(wanted, key=str)}; load it without `state` instead"
        )
    missing = sorted((key for key in wanted if key not in checkpoint), key=str)
    if missing:
        raise CheckpointError(
            f"{os.fspath(path)!r} has no entries {missing} that the state to load asks for; "
            f"it has {sorted(checkpoint, key=str)}"
        )


def restore_state(
    path: _PathLike,
    checkpoint: Any,
    state: dict[str, Any],
    load_module: Callable[[nn.Module, Any], None],
    load_optimizer: Callable[[Optimizer, Any], None],
    load_value: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint`` into the top-level entries of ``state``; returns the entries it did not name.

    Modules and optimizers load through ``load_*(target, saved)``, other stateful objects with
    their ``load_state_dict``, and a plain value of ``state`` is replaced by the saved one
    (passed through ``load_value`` first when given). Checked first with `check_checkpoint`.
    """
    check_checkpoint(path, checkpoint, state)
    rest = dict(checkpoint)

    def load_into(target: Any, saved: Any) -> Any:
        """Load ``saved`` into ``target`` in place where it holds state; return what ``target`` becomes."""
        if isinstance(target, nn.Module):
            load_module(target, saved)
        elif isinstance(target, Optimizer):
            load_optimizer(target, saved)
        elif is_stateful(target):
            target.load_state_dict(saved)
        elif isinstance(target, dict) and isinstance(saved, dict) and _holds_stateful(target):
            for key in list(target):
                if key in saved:
                    target[key] = load_into(target[key], saved[key])
        elif (
            isinstance(target, (list, tuple))
            and not hasattr(target, "_fields")
            and isinstance(saved, (list, tuple))
            and len(saved) == len(target)
            and _holds_stateful(target)
        ):
            loaded = [load_into(t, v) for t, v in zip(target, saved)]
            if isinstance(target, list):
                target[:] = loaded
            else:
                return type(target)(loaded)
        else:
            return saved if load_value is None else load_value(saved)
        return target

    for key, target in state.items():
        state[key] = load_into(target, rest.pop(key))
    return rest


def _holds_stateful(container: Any) -> bool:
    """Whether a module, optimizer or other stateful object sits anywhere inside ``container``."""
    return any(is_stateful(leaf) for leaf in state_leaves(container))


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel (and similar ``.module`` wrappers) and ``torch.compile``.

    A compiled module's own ``state_dict`` prefixes every key with ``_orig_mod.``; the module it
    compiled has the original keys, which is what checkpoints hold.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif is_compiled(module):
            module = cast(nn.Module, module._orig_mod)
        else:
            return module


def is_compiled(module: Any) -> bool:
    """Whether ``module`` is what ``torch.compile(module)`` returned (checked without importing dynamo)."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(module, dynamo.OptimizedModule)
