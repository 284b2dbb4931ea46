"""The objects that ``LightningLite.setup`` returns.

Each wraps by composition and keeps the original reachable (``.module``, ``.optimizer``,
``.dataloader``). They sit on every training step's path, so the per-call work is chosen
once, at construction, from the precision's fast-path flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

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

    @property
    def module(self) -> nn.Module:
        """The model that was passed to ``setup``."""
        return cast(nn.Module, self._original_module)

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
        """Load into the original module (keys as ``module.state_dict()`` names them)."""
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

    It subclasses ``torch.optim.Optimizer`` so learning-rate schedulers accept it, but holds no
    state of its own: ``param_groups``, ``state`` and ``defaults`` are the original's.
    """

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        # Deliberately no super().__init__: every piece of state lives in `optimizer`.
        self._optimizer = optimizer
        self._strategy = strategy
        # Chosen once: when neither the strategy nor the precision adds anything to the step
        # (no loss scaler, no engine), `step` is the optimizer's own.
        self._step: Callable[..., Any] = (
            optimizer.step if strategy.plain_backward_and_step else self._strategy_step
        )

    def _strategy_step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            return self._strategy.optimizer_step(self._optimizer)
        return self._strategy.optimizer_step(self._optimizer, closure=closure)

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer that was passed to ``setup``."""
        return self._optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._optimizer.defaults = value

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            return self._step()
        return self._step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks; `_optimizer` itself may be missing during unpickling.
        if name == "_optimizer":
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"_LiteOptimizer({self._optimizer!r})"
