"""The precision protocol and its no-op mode, ``"32-true"``.

Every mode is an object with the same methods; ``"32-true"`` passes everything through so
that a caller's code stays branch-free, and its fast-path flags (all False) let a caller
skip even the calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from lite_precision._devices import check_device, normalize_device_type, unsupported_reason


def cast_floating(data: Any, dtype: torch.dtype | Callable[[], torch.dtype]) -> Any:
    """A copy of the collection ``data`` with every floating tensor cast to ``dtype``.

    Integer, bool and complex tensors and non-tensors are returned as they are. ``dtype``
    may be a function, read once per call (the default dtype at the time of the call).
    """
    return _cast(data, dtype() if callable(dtype) else dtype)


def _cast(obj: Any, target: torch.dtype) -> Any:
    # Runs on every forward: plain tensors, tuples, lists and dicts are walked by hand, which
    # is several times faster than a pytree round trip; any other container goes through pytree.
    if isinstance(obj, torch.Tensor):
        return obj.to(target) if obj.is_floating_point() and obj.dtype is not target else obj
    kind = type(obj)
    if kind is tuple or kind is list:
        return kind([_cast(item, target) for item in obj])
    if kind is dict:
        return {key: _cast(value, target) for key, value in obj.items()}
    if kind in _LEAVES:
        return obj
    return tree_map_only(torch.Tensor, lambda tensor: _cast(tensor, target), obj)


_LEAVES = frozenset({str, bytes, int, float, bool, type(None)})


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype inside the block and restore the previous one after (nests)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class Precision:
    """Full precision, ``"32-true"``: the base of every mode, and a mode that does nothing.

    Args:
        device_type: the device the model runs on (``"cpu"``, ``"cuda"``, ``"mps"``, ``"xla"``;
            an index such as ``"cuda:1"`` is ignored). Picks the autocast device of mixed modes
            and decides, at construction, whether the mode can run there.

    Raises:
        PrecisionError: unknown ``device_type``, or a mode that device cannot run.
    """

    name: str = "32-true"
    dtype: torch.dtype = torch.float32
    """The dtype the math runs in (parameters may stay float32 in mixed modes)."""

    # Fast-path flags: a caller may skip a call whose flag is False.
    converts_inputs: bool = False
    converts_outputs: bool = False
    has_forward_context: bool = False
    uses_scaler: bool = False

    def __init__(self, device_type: str = "cpu") -> None:
        self.device_type = normalize_device_type(device_type)
        check_device(self.name, self.device_type)

    @classmethod
    def unsupported_reason(cls, device_type: str) -> str | None:
        """Why this mode cannot run on ``device_type``, or None; builds nothing, touches no device."""
        return unsupported_reason(cls.name, normalize_device_type(device_type))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device_type={self.device_type!r})"

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast the module's parameters and buffers for this mode, in place; returns the module."""
        return module

    def convert_input(self, data: Any) -> Any:
        """Cast the floating tensors of a collection of forward inputs for this mode."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Cast the floating tensors of a forward's outputs back for code outside the model."""
        return data

    def forward_context(self) -> AbstractContextManager[Any]:
        """The context the model's forward runs in (autocast for mixed modes)."""
        return contextlib.nullcontext()

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` with this mode around it: inputs converted, run in the context, outputs converted.

        Returns ``forward`` itself when the mode adds nothing (32-true). A wrapper built once
        and called on every step: modes may return a faster equivalent of the generic one.
        """
        if not (self.converts_inputs or self.has_forward_context or self.converts_outputs):
            return forward
        convert_input, convert_output, context = self.convert_input, self.convert_output, self.forward_context

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            args = convert_input(args)
            if kwargs:
                kwargs = convert_input(kwargs)
            with context():
                output = forward(*args, **kwargs)
            return convert_output(output)

        return wrapped

    def module_init_context(self) -> AbstractContextManager[Any]:
        """The context to create a module in so that its parameters are born in this mode's dtype."""
        return contextlib.nullcontext()

    @property
    def plain_backward_and_step(self) -> bool:
        """True when [`backward`][lite_precision.Precision.backward] is exactly ``tensor.backward`` and [`optimizer_step`][lite_precision.Precision.optimizer_step]
        exactly ``optimizer.step``: a caller on the hot path may then call those directly.

        False for a mode with a loss scaler and for any subclass that overrides either method.
        """
        return (
            type(self).backward is Precision.backward
            and type(self).optimizer_step is Precision.optimizer_step
        )

    def backward(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``tensor.backward(*args, **kwargs)``, scaled first where the mode scales losses."""
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """``optimizer.step(**kwargs)`` (a ``closure`` keyword included); returns what step returns."""
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the loss scale (before clipping); no-op without a scaler."""

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint (the loss scaler's); empty for modes without state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`state_dict`][lite_precision.Precision.state_dict] returned; a mode without state ignores it."""
