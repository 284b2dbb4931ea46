"""fairscale's sharded data parallel: ``ddp_sharded`` (script launcher) and ``ddp_sharded_spawn``.

Each optimizer becomes a fairscale ``OSS`` (every rank keeps the optimizer state of its own
share of the parameters and broadcasts them after its step) and the module a
``ShardedDataParallel`` (gradients are reduced to the rank that owns them). fairscale is
imported only when a module is set up, so this module imports without it.

The trap this closes: ``ShardedDataParallel`` reduces gradients through flat buffers that
``param.grad`` views. torch 2's ``Optimizer.zero_grad()`` defaults to ``set_to_none=True``,
which drops those views: the next backward writes fresh tensors the buffers never see, and
from the second step on every rank applies the same wrong gradient (so the ranks stay in
sync and nothing fails). The optimizer returned here zeroes gradients in place instead, and
the wrapped module re-attaches any gradient that was dropped anyway (``model.zero_grad()``,
``p.grad = None``) before its next forward.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections import defaultdict
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from lite_strategies._errors import StrategyError
from lite_strategies._parallel import ParallelStrategy
from lite_strategies._state import unwrap_module

#: Keyword arguments of ``fairscale.nn.ShardedDataParallel`` that pass through (the module,
#: the sharded optimizers and the process group come from the strategy). A test checks this
#: list against fairscale's signature.
SHARDED_DDP_KWARGS = (
    "auto_refresh_trainable",
    "broadcast_buffers",
    "reduce_buffer_size",
    "reduce_fp16",
    "sync_models_at_startup",
    "warn_on_trainable_params_changed",
)


@functools.cache
def _backend() -> SimpleNamespace:
    """Import fairscale and build the two subclasses that close the ``zero_grad`` trap (once)."""
    try:
        from fairscale.nn.data_parallel import ShardedDataParallel
        from fairscale.optim import OSS
    except ImportError as exc:
        raise StrategyError(
            f"strategy 'ddp_sharded' needs fairscale, which could not be imported ({exc}): "
            "pip install 'fairscale>=0.4.13' (what the extra lite-strategies[fairscale] installs)"
        ) from exc

    class LiteOSS(OSS):
        """fairscale's OSS whose ``zero_grad`` keeps gradients attached to ShardedDataParallel's buffers."""

        def zero_grad(self, set_to_none: bool = True) -> None:
            """Zero every gradient in place; ``set_to_none`` is ignored (see the module docstring).

            Dropping a gradient would detach it from the flat buffer that ShardedDataParallel
            reduces, and silently give wrong gradients from the next step on.
            """
            _zero_grads_in_place(p for group in self.param_groups for p in group["params"])

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            """Load a full (consolidated) state: this rank keeps the state of the parameters it owns.

            The caller's dict is not modified (fairscale empties the entries other ranks own).
            """
            super().load_state_dict({**state_dict, "state": dict(state_dict["state"])})
            # torch's loader also kept a copy of this rank's shard in the outer state, which
            # nothing reads (the shard's optimizer holds it): free it.
            self.state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)

    class LiteShardedDataParallel(ShardedDataParallel):
        """ShardedDataParallel that re-attaches dropped gradients to its buffers before each forward."""

        def forward(self, *inputs: Any, **kwargs: Any) -> Any:
            _reattach_bucket_grads(self)
            return super().forward(*inputs, **kwargs)

    return SimpleNamespace(
        OSS=OSS,
        LiteOSS=LiteOSS,
        ShardedDataParallel=ShardedDataParallel,
        LiteShardedDataParallel=LiteShardedDataParallel,
    )


@torch.no_grad()
def _zero_grads_in_place(params: Any) -> None:
    for p in params:
        grad = p.grad
        if grad is None:
            continue
        if grad.grad_fn is not None:
            grad.detach_()
        else:
            grad.requires_grad_(False)
        grad.zero_()


@torch.no_grad()
def _reattach_bucket_grads(module: Any) -> None:
    """Make each bucketed parameter's ``.grad`` a view of its slot in the bucket again, if it was dropped.

    A dropped gradient (None) restarts from zero; a gradient replaced by another tensor is
    copied into the slot. Relies on fairscale 0.4.13's bucket layout (params in fill order).
    """
    for bucket in getattr(module, "_bucket_list", ()):
        buffer = bucket.buffer
        if buffer is None or buffer.numel() == 0:
            continue
        offset = 0
        for p in bucket._params:
            n = p.numel()
            slot = buffer[offset : offset + n]
            offset += n
            grad = p.grad
            if grad is not None and grad.data_ptr() == slot.data_ptr():
                continue
            if grad is None:
                slot.zero_()
            else:
                slot.copy_(grad.detach().flatten())
            p.grad = slot.view_as(p)


def _shard_optimizer(optimizer: torch.optim.Optimizer) -> Any:
    """An OSS over ``optimizer``'s parameter groups, of the same class and settings, with its state."""
    backend = _backend()
    if isinstance(optimizer, backend.OSS):
        raise StrategyError(
            "the optimizer is already a fairscale OSS; pass the plain torch optimizer (e.g. "
            "torch.optim.SGD(model.parameters(), lr=0.1)) and strategy 'ddp_sharded' shards it"
        )
    cls = type(optimizer)
    defaults = dict(optimizer.defaults)
    parameters = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        # torch puts a few internal flags in `defaults` that some constructors do not take
        defaults = {key: value for key, value in defaults.items() if key in parameters}
    groups = [dict(group) for group in optimizer.param_groups]
    sharded = backend.LiteOSS(params=groups, optim=cls, **defaults)
    if optimizer.state:
        # State from steps taken before setup (or a loaded checkpoint): each rank keeps its shard,
        # moved to the parameters' device.
        sharded.load_state_dict(optimizer.state_dict())
    return sharded


class DDPShardedStrategy(ParallelStrategy):
    """Data parallel with sharded optimizer state and gradients (fairscale OSS + ShardedDataParallel).

    Keyword arguments of ``ShardedDataParallel`` (``broadcast_buffers``, ``reduce_buffer_size``,
    ``reduce_fp16``, ``sync_models_at_startup``, ``auto_refresh_trainable``,
    ``warn_on_trainable_params_changed``) pass through; others are refused here. A module is
    set up together with its optimizers (each becomes an ``OSS``). ``"16-mixed"`` needs CUDA
    (fairscale's ShardedGradScaler cannot run on CPU); ``"bf16-mixed"`` runs anywhere.
    """

    strategy_name: ClassVar[str] = "ddp_sharded"
    accepted_kwargs: ClassVar[tuple[str, ...]] = (*ParallelStrategy.accepted_kwargs, *SHARDED_DDP_KWARGS)

    def setup_environment(self) -> None:
        """Join the process group; with ``"16-mixed"``, give the precision a shard-aware loss scaler."""
        super().setup_environment()
        if self.precision.uses_scaler:
            self._use_sharded_scaler()

    def _use_sharded_scaler(self) -> None:
        # Each rank sees the gradients of its own shard only: the inf/NaN check must be
        # all-reduced, or ranks disagree on skipping a step (and OSS's broadcast hangs).
        from fairscale.optim.grad_scaler import ShardedGradScaler

        scaler = getattr(self.precision, "scaler", None)
        if isinstance(scaler, ShardedGradScaler):
            return
        if type(scaler) is not torch.amp.GradScaler or not hasattr(self.precision, "set_scaler"):
            raise StrategyError(
                f"strategy {self.strategy_name!r} needs a shard-aware loss scaler, but the precision plugin "
                f"{self.precision!r} uses {type(scaler).__name__}; pass "
                "MixedPrecision('cuda', scaler=fairscale.optim.grad_scaler.ShardedGradScaler()) or no scaler"
            )
        with warnings.catch_warnings():  # fairscale builds on the deprecated torch.cuda.amp.GradScaler
            warnings.simplefilter("ignore", FutureWarning)
            sharded = ShardedGradScaler()
        sharded.load_state_dict(scaler.state_dict())  # keeps the settings (initial scale, growth, ...)
        self.precision.set_scaler(sharded)

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[torch.optim.Optimizer], *, move_to_device: bool = True
    ) -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        """Convert and move the module, shard each optimizer (OSS), wrap the module (ShardedDataParallel).

        Returns the wrapped module and the OSS optimizers (same class and settings as the given
        ones, with their state if any). Call this on every rank: it communicates.
        """
        if not optimizers:
            raise StrategyError(
                f"strategy {self.strategy_name!r} sets a module up together with its optimizer(s): "
                "pass them in the same call, e.g. lite.setup(model, optimizer)"
            )
        backend = _backend()
        module = self.precision.convert_module(module)
        if move_to_device:  # False: the caller placed the module itself
            module = self.module_to_device(module)
        sharded = [_shard_optimizer(opt) for opt in optimizers]
        wrapped = backend.LiteShardedDataParallel(module, sharded_optimizer=sharded, **self._backend_kwargs)
        self._wrapped.append(weakref.ref(wrapped))
        return wrapped, sharded

    def setup_module(self, module: nn.Module, *, move_to_device: bool = True) -> nn.Module:
        """Refused: ShardedDataParallel needs the module's optimizers (use setup_module_and_optimizers)."""
        raise StrategyError(
            f"strategy {self.strategy_name!r} cannot set a module up without its optimizer(s): "
            "ShardedDataParallel reduces gradients to the rank whose optimizer owns them. "
            "Use setup_module_and_optimizers(module, [optimizer]) (lite.setup(model, optimizer))"
        )

    def no_backward_sync(self, module: nn.Module) -> AbstractContextManager[Any]:
        """ShardedDataParallel's ``no_sync``: accumulate locally, reduce on the next backward outside it."""
        if not isinstance(module, _backend().ShardedDataParallel):
            raise StrategyError(
                "no_backward_sync needs the module returned by setup_module_and_optimizers (a fairscale "
                f"ShardedDataParallel), got {type(module).__name__}"
            )
        context: AbstractContextManager[Any] = module.no_sync()
        return context

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Clip by the norm over every rank's share (a collective: each rank holds only the gradients it owns).

        A norm taken over the local ``.grad`` would miss the other ranks' shares, so an OSS
        optimizer clips through fairscale's ``OSS.clip_grad_norm``, which reduces the norm.
        """
        if not isinstance(optimizer, _backend().OSS):
            return super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        self.precision.unscale_gradients(optimizer)
        norm: torch.Tensor = optimizer.clip_grad_norm(max_norm, norm_type=norm_type)
        if error_if_nonfinite and not self.precision.uses_scaler and not torch.isfinite(norm):
            raise RuntimeError(
                f"The total norm of order {norm_type} of the gradients is non-finite, so it cannot be "
                "clipped; pass error_if_nonfinite=False to clip anyway"
            )
        return norm

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's full state dict with its original keys (every rank holds all parameters)."""
        return _unwrap(module).state_dict()

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> None:
        """Load a full state dict (original keys) into a module this strategy set up (in place)."""
        _unwrap(module).load_state_dict(state_dict, strict=strict)

    def get_optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state, gathered on global rank 0 (empty on the others).

        A collective: every rank must call it (``save_checkpoint`` does). The result is a plain
        torch optimizer state dict: it loads into an OSS on any number of ranks, or into the
        unsharded optimizer.
        """
        if not isinstance(optimizer, _backend().OSS):
            return optimizer.state_dict()
        optimizer.consolidate_state_dict(recipient_rank=0)
        if not self.is_global_zero:
            return {}
        state: dict[str, Any] = optimizer.state_dict()
        optimizer._all_states = []  # the gathered copy is in `state`; do not keep a second one
        return state


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside ShardedDataParallel (and DDP-like wrappers)."""
    if isinstance(module, _backend().ShardedDataParallel):
        inner: nn.Module = module.module
        return unwrap_module(inner)
    return unwrap_module(module)


class DDPShardedSpawnStrategy(DDPShardedStrategy):
    """Thin alias: [`DDPShardedStrategy`][lite_strategies.DDPShardedStrategy] as the ``ddp_sharded_spawn`` row (processes started with 'spawn')."""

    strategy_name: ClassVar[str] = "ddp_sharded_spawn"
