"""LightningLite's training step: backward, autocast, no_backward_sync, clip_gradients, to_device."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from lite_devices import move_to_device
from lite_facade._wrappers import _LiteModule, _LiteOptimizer

if TYPE_CHECKING:
    from lite_precision import Precision
    from lite_strategies import Strategy


class StepMethods:
    """The training-step methods of [`LightningLite`][lite_facade.LightningLite] (a part of it, kept in its own module)."""

    if TYPE_CHECKING:  # provided by LightningLite
        _strategy: Strategy
        _precision: Precision
        _plain_backward: bool
        _models: list[nn.Module]

        @property
        def device(self) -> torch.device: ...

    # -- the step ------------------------------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, *args: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """Use instead of ``loss.backward()``; extra arguments (``retain_graph``, ``inputs``, ...) pass on."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"backward() takes the loss as a tensor, got {type(tensor).__name__}: a Python number "
                "(e.g. from loss.item()) has no graph to go back through; pass the tensor itself."
            )
        if self._plain_backward:  # neither the strategy nor the precision adds anything
            tensor.backward(*args, **kwargs)
            return
        if model is None and len(self._models) == 1:
            model = self._models[0]
        # The strategy needs what it wrapped (e.g. DeepSpeed's engine), not the user's module.
        module = model.forward_module if isinstance(model, _LiteModule) else model
        self._strategy.backward(tensor, module, *args, **kwargs)

    @contextmanager
    def autocast(self) -> Generator[None, None, None]:
        """Run the block under the precision's autocast (the set-up model's forward already does)."""
        with self._precision.forward_context():
            yield

    @contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Generator[None, None, None]:
        """Skip the gradient synchronization of ``backward`` inside the block (gradient accumulation).

        With DDP-like strategies (ddp, ddp_spawn, ddp_fork, ddp_sharded, fsdp) the gradients of the
        backward passes inside the block stay local and are summed into the next synchronized
        backward. In one process it does nothing. DeepSpeed: stages 0 and 1 skip the synchronization,
        stage 3 synchronizes anyway (correct, just not skipped), and stage 2 raises (DeepSpeed would
        keep only the last micro-batch; accumulate with ``gradient_accumulation_steps`` there).
        ``enabled=False`` makes it a no-op, for ``enabled=not is_last_micro_batch``.
        """
        if not isinstance(module, _LiteModule):
            raise TypeError(
                "no_backward_sync() takes the model that `setup()` returned, got "
                f"{type(module).__name__}; call `model = self.setup(model)` first"
            )
        if not enabled:
            yield
            return
        with self._strategy.no_backward_sync(module.forward_module):
            yield

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip the gradients of ``module``'s parameters after ``backward``, before ``optimizer.step()``.

        Pass ``clip_val`` to clamp every gradient value to ``[-clip_val, clip_val]``, or ``max_norm``
        to rescale them so that their total ``norm_type`` norm is at most ``max_norm`` (the norm
        before clipping is returned). Gradients scaled for 16-mixed are unscaled first, and there a
        non-finite norm is not an error: the loss scaler skips that step and lowers the scale.
        The strategy decides how: with ``ddp_sharded`` the norm is reduced over every rank's
        share, and DeepSpeed refuses (it clips inside its step: ``gradient_clipping`` in its config).
        """
        if (clip_val is None) == (max_norm is None):
            raise ValueError(
                "clip_gradients() needs exactly one of clip_val= (by value) or max_norm= (by norm)"
            )
        inner = optimizer.optimizer if isinstance(optimizer, _LiteOptimizer) else optimizer
        if clip_val is not None:
            self._strategy.clip_gradients_value(module, inner, clip_val)
            return None
        assert max_norm is not None
        return self._strategy.clip_gradients_norm(
            module, inner, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def to_device(self, obj: Any) -> Any:
        """Move a module, a tensor or any collection of tensors to this process's device."""
        if isinstance(obj, nn.Module):
            return obj.to(self.device)
        return move_to_device(obj, self.device)
