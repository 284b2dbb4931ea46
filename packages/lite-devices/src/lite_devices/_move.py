"""Moving a nested collection of tensors to a device.

A small hand-written walker rather than torch's pytree: it must keep the exact container
types (defaultdict's factory, namedtuples, frozen dataclasses with ``init=False`` fields),
honour any object's own ``.to()``, and cost nothing for the common case of one tensor that
is already on the device (it runs on every batch of every step).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn import Module

T = TypeVar("T")

_LEAVES = (str, bytes, int, float, complex, bool, type(None))


def move_to_device(obj: T, device: torch.device | str | int, *, non_blocking: bool = False) -> T:
    """Return ``obj`` with every tensor in it moved to ``device``.

    Walks tensors, modules (moved in place and returned), dicts (OrderedDict, defaultdict with
    its factory, other mappings), lists, tuples, namedtuples and dataclasses (frozen ones and
    ``init=False`` fields included), and calls ``.to(device)`` on any other object that has
    one (its result, or the object itself when ``.to`` returns None). Everything else is
    returned untouched. Containers are rebuilt with the same type; the input is not mutated
    (except modules, which ``Module.to`` moves in place).

    ``non_blocking`` is passed to tensors and modules only when the target is a CUDA device
    (elsewhere it would be ignored or be unsafe).

    Examples:
        >>> batch = {"x": torch.zeros(2), "meta": ["id", 3]}
        >>> move_to_device(batch, "cpu")["x"].device
        device(type='cpu')
    """
    target = device if isinstance(device, torch.device) else torch.device(device)
    if isinstance(obj, Tensor) and obj.device == target:
        return obj  # the per-step fast path: nothing to do
    return _move(obj, target, non_blocking and target.type == "cuda")


def _move(obj: Any, device: torch.device, nb: bool) -> Any:
    if isinstance(obj, Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=nb)
    cls = type(obj)
    # exact built-in containers first: they are what batches are made of
    if cls is dict:
        return {k: _move(v, device, nb) for k, v in obj.items()}
    if cls is list:
        return [_move(v, device, nb) for v in obj]
    if cls is tuple:
        return tuple(_move(v, device, nb) for v in obj)
    if isinstance(obj, _LEAVES):
        return obj
    if isinstance(obj, Module):
        return obj.to(device, non_blocking=nb)
    if isinstance(obj, Mapping):
        moved = {k: _move(v, device, nb) for k, v in obj.items()}
        if isinstance(obj, defaultdict):
            return cls(obj.default_factory, moved)
        return cls(moved)
    if isinstance(obj, tuple):
        items = [_move(v, device, nb) for v in obj]
        return cls(*items) if hasattr(obj, "_fields") else cls(items)  # namedtuple or plain subclass
    if isinstance(obj, list):
        return cls(_move(v, device, nb) for v in obj)
    if isinstance(obj, type):  # a class is a leaf, even one with a .to method
        return obj
    to = getattr(obj, "to", None)
    if callable(to):
        # a user type's own transfer; its signature is unknown, so no non_blocking
        out = to(device)
        return obj if out is None else out
    if dataclasses.is_dataclass(obj):
        # copy then overwrite, so frozen classes and init=False fields work and
        # __post_init__ is not run a second time
        new = copy.copy(obj)
        for f in dataclasses.fields(obj):
            if hasattr(obj, f.name):
                object.__setattr__(new, f.name, _move(getattr(obj, f.name), device, nb))
        return new
    return obj
