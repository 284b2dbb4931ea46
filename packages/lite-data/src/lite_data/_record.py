"""Remember the constructor arguments of DataLoader subclasses, so that they can be re-created.

A DataLoader subclass may take arguments that it uses and does not store (``def __init__(self,
root, ...)``); re-creating it with a distributed sampler then needs the arguments it was
called with. [`record_dataloader_arguments`][lite_data.record_dataloader_arguments] makes every DataLoader subclass created
inside its block remember them, and undoes every change when the block ends.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils.data import DataLoader

# Where an instance keeps the (args, kwargs) its outermost constructor was called with.
_ARGUMENTS = "_lite_data_init_arguments"
_MISSING = object()

_lock = threading.Lock()
_depth = 0  # nested blocks: only the outermost one patches and restores
_patched: list[tuple[type, Callable[..., Any]]] = []  # (class, its own __init__ before the block)
_previous_hook: Any = _MISSING  # DataLoader's own __init_subclass__ before the block, if it had one


def recorded_arguments(dataloader: DataLoader[Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The ``(args, kwargs)`` ``dataloader`` was constructed with, if it was created in a recording block."""
    recorded = vars(dataloader).get(_ARGUMENTS)
    return None if recorded is None else (tuple(recorded[0]), dict(recorded[1]))


@contextmanager
def record_dataloader_arguments() -> Iterator[None]:
    """Make the DataLoader subclasses created inside the block remember their constructor arguments.

    [`distributed_dataloader`][lite_data.distributed_dataloader] then re-creates such a loader from the arguments it was
    called with, so a subclass whose ``__init__`` takes arguments it does not store as
    same-named attributes can still get a distributed sampler. Inside the block, the
    ``__init__`` of every DataLoader subclass that defines one (including classes defined in
    the block) records its arguments on the instance; when the block ends, normally or by an
    exception, every class is restored as it was. Blocks may nest; only the outermost one
    patches and restores. ``LightningLite.run`` runs its body in this block.
    """
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _install()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()


def _subclasses(root: type) -> list[type]:
    found: list[type] = []
    todo: list[type] = list(root.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


def _wrap_init(cls: type) -> None:
    original = cls.__dict__.get("__init__")
    if original is None or getattr(original, "_lite_data_records", False):
        return

    @functools.wraps(original)
    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        # Only the outermost call: a subclass's super().__init__(...) passes other arguments.
        if _ARGUMENTS not in vars(self):
            object.__setattr__(self, _ARGUMENTS, (args, kwargs))
        original(self, *args, **kwargs)

    recording_init._lite_data_records = True  # type: ignore[attr-defined]
    type.__setattr__(cls, "__init__", recording_init)
    _patched.append((cls, original))


def _install() -> None:
    global _previous_hook
    for cls in _subclasses(DataLoader):
        _wrap_init(cls)
    _previous_hook = DataLoader.__dict__.get("__init_subclass__", _MISSING)
    previous = _previous_hook

    def record_new_subclass(cls: type, **kwargs: Any) -> None:
        if previous is _MISSING:
            super(DataLoader, cls).__init_subclass__(**kwargs)  # type: ignore[misc]
        else:
            previous.__get__(None, cls)(**kwargs)
        _wrap_init(cls)

    type.__setattr__(DataLoader, "__init_subclass__", classmethod(record_new_subclass))


def _uninstall() -> None:
    global _previous_hook
    if _previous_hook is _MISSING:
        type.__delattr__(DataLoader, "__init_subclass__")
    else:
        type.__setattr__(DataLoader, "__init_subclass__", _previous_hook)
    _previous_hook = _MISSING
    while _patched:
        cls, original = _patched.pop()
        if getattr(cls.__dict__.get("__init__"), "_lite_data_records", False):
            type.__setattr__(cls, "__init__", original)
