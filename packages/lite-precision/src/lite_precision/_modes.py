"""The modes other than ``"32-true"``: double, mixed (autocast) and true half precision."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from lite_precision._base import Precision, _cast, cast_floating, default_dtype
from lite_precision._errors import PrecisionError


def _cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # Like module.to(dtype), but complex parameters keep their dtype instead of losing the
    # imaginary part.
    return module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


class _TruePrecision(Precision):
    """Parameters, buffers, inputs and every tensor created in forward in ``dtype``; no autocast."""

    converts_inputs = True
    converts_outputs = True
    has_forward_context = True

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return _cast_module(module, self.dtype)

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return cast_floating(data, torch.get_default_dtype)

    def forward_context(self) -> AbstractContextManager[Any]:
        # tensors created inside forward (torch.zeros(...)) get the mode's dtype too
        return default_dtype(self.dtype)

    def module_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.dtype)


class DoublePrecision(_TruePrecision):
    """``"64-true"``: parameters, buffers, inputs and the forward in float64.

    The floating outputs of the forward come back in the default dtype (float32), as with
    every other mode and as LightningLite does: code outside the model sees the same dtype
    whatever the precision. Gradients still flow back through the cast in float64.
    """

    name = "64-true"
    dtype = torch.float64


class HalfPrecision(_TruePrecision):
    """``"16-true"``: parameters and inputs in float16, no autocast, no loss scaling."""

    name = "16-true"
    dtype = torch.float16


class BFloat16Precision(_TruePrecision):
    """``"bf16-true"``: parameters and inputs in bfloat16, no autocast."""

    name = "bf16-true"
    dtype = torch.bfloat16


class MixedPrecision(Precision):
    """Autocast to ``dtype`` in forward; float32 parameters; loss scaling for float16.

    Args:
        device_type: see [`Precision`][lite_precision.Precision].
        dtype: ``torch.float16`` (``"16-mixed"``, with a GradScaler) or ``torch.bfloat16``
            (``"bf16-mixed"``, no scaler).
        scaler: a ``torch.amp.GradScaler`` to use instead of the default one (float16 only).
            Without one, the default scaler is created on first use, so construction touches
            no device and stays fork-safe.
    """

    name = "16-mixed"
    dtype = torch.float16
    uses_scaler = True
    converts_inputs = True
    converts_outputs = True
    has_forward_context = True

    def __init__(
        self,
        device_type: str = "cpu",
        *,
        dtype: torch.dtype = torch.float16,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if dtype not in (torch.float16, torch.bfloat16):
            raise PrecisionError(
                f"mixed precision with dtype={dtype}: expected torch.float16 or torch.bfloat16"
            )
        if scaler is not None and dtype != torch.float16:
            raise PrecisionError(
                "a GradScaler was passed with bfloat16 mixed precision, which needs none; drop it"
            )
        # instance attributes shadow the class defaults, so one class serves both dtypes
        self.name = "16-mixed" if dtype == torch.float16 else "bf16-mixed"
        self.dtype = dtype
        self.uses_scaler = dtype == torch.float16
        super().__init__(device_type)
        self._scaler = scaler

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler (None for bfloat16); created on first access."""
        if self.uses_scaler and self._scaler is None:
            self._scaler = torch.amp.GradScaler(self.device_type)
        return self._scaler

    def set_scaler(self, scaler: torch.amp.GradScaler) -> None:
        """Replace the loss scaler (e.g. by a shard-aware one that all-reduces its inf check).

        Only float16 mixed precision scales the loss; call it before the first step (the
        scaler's state is not carried over: load it into the new one first if it matters).
        """
        if not self.uses_scaler:
            raise PrecisionError(f"{self!r} uses no loss scaler (only float16 mixed precision does)")
        if not isinstance(scaler, torch.amp.GradScaler):
            raise PrecisionError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        self._scaler = scaler

    @property
    def plain_backward_and_step(self) -> bool:
        """True for bfloat16 (no scaler), unless a subclass overrides backward or optimizer_step."""
        return (
            not self.uses_scaler
            and type(self).backward is MixedPrecision.backward
            and type(self).optimizer_step is MixedPrecision.optimizer_step
        )

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return cast_floating(data, torch.get_default_dtype)

    def forward_context(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """The generic wrapper with the calls inlined (it runs on every step); the same casts and autocast."""
        cls = type(self)
        if not (
            cls.convert_input is MixedPrecision.convert_input
            and cls.convert_output is MixedPrecision.convert_output
            and cls.forward_context is MixedPrecision.forward_context
        ):
            return super().wrap_forward(forward)  # a subclass changed a piece: compose its methods
        autocast, get_default_dtype = torch.autocast, torch.get_default_dtype
        device_type, dtype = self.device_type, self.dtype

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            args = _cast(args, dtype)
            if kwargs:
                kwargs = _cast(kwargs, dtype)
            with autocast(device_type, dtype=dtype):
                output = forward(*args, **kwargs)
            return _cast(output, get_default_dtype())

        return wrapped

    def backward(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        scaler = self.scaler
        if scaler is not None:
            tensor = scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """Step; with a scaler: unscale (unless done already), skip on inf/NaN, update the scale.

        A ``closure`` is called once before the step (it computes the loss and calls
        backward), and its result is returned, as ``optimizer.step(closure)`` would.
        """
        scaler = self.scaler
        if scaler is None:
            return optimizer.step(**kwargs)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise PrecisionError(
                "LBFGS re-evaluates its closure inside step, which loss scaling cannot follow; "
                "use precision='bf16-mixed' or '32-true' with LBFGS"
            )
        closure = kwargs.pop("closure", None)
        closure_result = closure() if closure is not None else None
        step_result = scaler.step(optimizer, **kwargs)  # None when skipped for inf/NaN
        scaler.update()
        return closure_result if closure is not None else step_result

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = self.scaler
        if scaler is not None:
            scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        scaler = self.scaler
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scaler = self.scaler
        if scaler is not None and state:  # an empty state comes from a mode without a scaler
            scaler.load_state_dict(state)


class HalfMixedPrecision(MixedPrecision):
    """``"16-mixed"``: autocast to float16 with a GradScaler."""

    name = "16-mixed"
    dtype = torch.float16
    uses_scaler = True

    def __init__(self, device_type: str = "cpu", *, scaler: torch.amp.GradScaler | None = None) -> None:
        super().__init__(device_type, dtype=torch.float16, scaler=scaler)


class BFloat16MixedPrecision(MixedPrecision):
    """``"bf16-mixed"``: autocast to bfloat16, no scaler."""

    name = "bf16-mixed"
    dtype = torch.bfloat16

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__(device_type, dtype=torch.bfloat16)
