"""The objects that ``LightningLite.setup`` returns.

Each wraps by composition and keeps the original reachable (``.module``, ``.optimizer``,
``.dataloader``). They sit on every training step's path, so the per-call work is chosen
once, at construction, from the precision's fast-path flags.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.modules import module as _module_globals
from torch.optim import Optimizer

if TYPE_CHECKING:
    from lite_precision import Precision
    from lite_strategies import Strategy


class _LiteModule(nn.Module):
    """A set-up model: its forward converts inputs, runs under the precision's context, converts outputs.

    ``forward_module`` is what actually runs (e.g. the DDP wrapper); ``module`` is the object the
    user passed to ``setup``, whose parameter names ``state_dict`` and ``load_state_dict`` use.
    """

    def __init__(
        self, forward_module: nn.Module, precision: Precision, original_module: nn.Module | None = None
    ) -> None:
        super().__init__()
        if original_module is None:  # nothing wrapped it: the module runs as it is
            original_module = forward_module
        self._forward_module = forward_module
        # Not registered as a submodule: it is (or is inside) `_forward_module` already.
        object.__setattr__(self, "_original_module", original_module)
        object.__setattr__(self, "_precision", precision)
        object.__setattr__(self, "_forward_impl", self._choose_forward(precision))
        # Where a module without parameters or buffers is, as far as `.to()` & co. on this wrapper said.
        object.__setattr__(self, "_empty_device", torch.device("cpu"))
        object.__setattr__(self, "_empty_dtype", torch.get_default_dtype())

    @property
    def module(self) -> nn.Module:
        """The model that was passed to ``setup``."""
        return cast(nn.Module, self._original_module)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (or buffers); it follows ``.to()``, ``.cuda()``, ``.cpu()``."""
        for tensor in itertools.chain(self._original_module.parameters(), self._original_module.buffers()):
            return tensor.device
        return cast(torch.device, self._empty_device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating parameters (or buffers); it follows ``.half()``, ``.double()``, ``.to()``."""
        for tensor in itertools.chain(self._original_module.parameters(), self._original_module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return cast(torch.dtype, self._empty_dtype)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Every `.to()`, `.half()`, `.cuda()` ... ends here: see what it does to an empty tensor, so that a
        # module without tensors reports the device and dtype it was moved to.
        result = super()._apply(fn, *args, **kwargs)
        try:
            probe = fn(torch.empty(0, device=self._empty_device, dtype=self._empty_dtype))
        except Exception:  # a function meant for real tensors only: nothing to learn from it
            return result
        if isinstance(probe, torch.Tensor):
            object.__setattr__(self, "_empty_device", probe.device)
            object.__setattr__(self, "_empty_dtype", probe.dtype)
        return result

    @property
    def forward_module(self) -> nn.Module:
        """What the strategy wrapped (e.g. the DDP module): what the forward actually runs."""
        return self._forward_module

    def _choose_forward(self, precision: Precision) -> Callable[..., Any]:
        # 1. convert inputs, 2. run under the precision's context, 3. convert outputs; for 32-true
        # that is the user's own forward, untouched.
        return precision.wrap_forward(self._forward_module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward_impl(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module.__call__ would only look for hooks on this wrapper and then call `forward`:
        # go straight there unless someone registered a hook on it (or compiled it in place).
        if (
            self._forward_pre_hooks
            or self._forward_hooks
            or self._backward_pre_hooks
            or self._backward_hooks
            or self.__dict__.get("_compiled_call_impl") is not None
            or _ALL_FORWARD_PRE
            or _ALL_FORWARD
            or _ALL_BACKWARD_PRE
            or _ALL_BACKWARD
        ):
            return super().__call__(*args, **kwargs)
        return self._forward_impl(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The original module's state dict (its own keys, no wrapper prefix)."""
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load into the original module (keys as ``module.state_dict()`` names them).

        A state dict saved from a ``torch.compile``-d module by plain torch (every key prefixed
        with ``_orig_mod.``) loads too.
        """
        prefix = "_orig_mod."
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            state_dict = type(state_dict)((k[len(prefix) :], v) for k, v in state_dict.items())
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._original_module, name)

    def __repr__(self) -> str:
        return f"_LiteModule({self._original_module!r})"


def _global_hooks(name: str) -> Any:
    # A torch that keeps these elsewhere gets a truthy stand-in: the caller then takes the safe path.
    return getattr(_module_globals, name, True)


# The dicts torch keeps the hooks registered for every module in (register_module_forward_hook & co).
_ALL_FORWARD_PRE = _global_hooks("_global_forward_pre_hooks")
_ALL_FORWARD = _global_hooks("_global_forward_hooks")
_ALL_BACKWARD_PRE = _global_hooks("_global_backward_pre_hooks")
_ALL_BACKWARD = _global_hooks("_global_backward_hooks")


class _LiteOptimizer(Optimizer):
    """A set-up optimizer: ``step`` goes through the strategy (and so the precision).

    ``_LiteOptimizer(optimizer, strategy)`` returns an instance of a subclass made once per
    optimizer class, ``_Lite<Class>``, that derives from both ``_LiteOptimizer`` and the
    original's class, so ``isinstance(opt, torch.optim.SGD)`` holds and learning-rate
    schedulers accept it. It holds no optimizer state of its own: every attribute other than
    ``step`` and ``optimizer`` (``param_groups``, ``state``, ``defaults``, ``zero_grad``,
    ``state_dict``, ``add_param_group``, hooks, ...) is read from and written to the original.
    The user's object is never changed; pickling stores the original and the strategy.
    """

    def __new__(
        cls, optimizer: Optimizer, strategy: Strategy, original: Optimizer | None = None
    ) -> _LiteOptimizer:
        if cls is _LiteOptimizer:
            # The class of what the user passed to `setup` (a strategy may have replaced it).
            cls = _lite_optimizer_class((optimizer if original is None else original).__class__)
        return object.__new__(cls)

    def __init__(self, optimizer: Optimizer, strategy: Strategy, original: Optimizer | None = None) -> None:
        # Deliberately no super().__init__: every piece of state lives in `optimizer`.
        own = object.__setattr__
        own(self, "_optimizer", optimizer)
        own(self, "_strategy", strategy)
        # Chosen once: when neither the strategy nor the precision adds anything to the step
        # (no loss scaler, no engine), `step` is the optimizer's own.
        own(self, "_step", optimizer.step if _plain_step(strategy) else self._strategy_step)

    def _strategy_step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            return self._strategy.optimizer_step(self._optimizer)
        return self._strategy.optimizer_step(self._optimizer, closure=closure)

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer that was passed to ``setup``."""
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step through the strategy (which unscales and skips steps under 16-mixed)."""
        if closure is None:
            return self._step()
        return self._step(closure)

    def __getattribute__(self, name: str) -> Any:
        if name in _OWN_NAMES or (name[:2] == "__" and name[-2:] == "__"):
            return object.__getattribute__(self, name)
        instance = object.__getattribute__(self, "__dict__")
        if name in instance:  # set on the wrapper itself (an LR scheduler's patched `step`)
            return instance[name]
        return getattr(instance["_optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN_NAMES or (name[:2] == "__" and name[-2:] == "__"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._optimizer, name, value)

    def __delattr__(self, name: str) -> None:
        if name in _OWN_NAMES or name in object.__getattribute__(self, "__dict__"):
            object.__delattr__(self, name)
        else:
            delattr(self._optimizer, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_LiteOptimizer, (self._optimizer, self._strategy))

    def __repr__(self) -> str:
        return f"_LiteOptimizer({self._optimizer!r})"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._optimizer)) | {"optimizer", "step"})


# What the wrapper keeps for itself; everything else is the original optimizer's. `step` may
# also be set on the wrapper (torch's LR schedulers wrap it to count the calls).
_OWN_NAMES = frozenset({"_optimizer", "_strategy", "_step", "_strategy_step", "optimizer", "step"})

_CLASSES: dict[type, type] = {}


def _plain_step(strategy: Any) -> bool:
    return getattr(strategy, "plain_backward_and_step", False) is True


def _lite_optimizer_class(optimizer_class: type) -> type:
    """The subclass of ``_LiteOptimizer`` and ``optimizer_class`` (made once per class)."""
    cls = _CLASSES.get(optimizer_class)
    if cls is not None:
        return cls
    if (
        not isinstance(optimizer_class, type)
        or not issubclass(optimizer_class, Optimizer)
        or issubclass(_LiteOptimizer, optimizer_class)
    ):
        return _LiteOptimizer
    try:
        cls = type(
            f"_Lite{optimizer_class.__name__}",
            (_LiteOptimizer, optimizer_class),
            {"__module__": __name__, "__qualname__": f"_Lite{optimizer_class.__name__}"},
        )
    except TypeError:  # a class that cannot be combined (layout, metaclass): isinstance on Optimizer only
        cls = _LiteOptimizer
    _CLASSES[optimizer_class] = cls
    return cls
