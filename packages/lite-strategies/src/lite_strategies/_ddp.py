"""torch DistributedDataParallel; the rows ``ddp``, ``ddp_spawn`` and ``ddp_fork`` differ only in launcher kind."""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lite_strategies._errors import StrategyError
from lite_strategies._parallel import ParallelStrategy

# device_ids/output_device follow from the process's device; the rest pass through.
_DDP_KWARGS = tuple(
    sorted(
        name
        for name in inspect.signature(DistributedDataParallel.__init__).parameters
        if name not in ("self", "module", "device_ids", "output_device", "args", "kwargs")
    )
)


class DDPStrategy(ParallelStrategy):
    """One process per device, gradients averaged by ``DistributedDataParallel``.

    Keyword arguments of DistributedDataParallel (``find_unused_parameters``,
    ``static_graph``, ``gradient_as_bucket_view``, ...) pass through; others are refused here.
    The process group uses gloo on CPU and nccl on CUDA unless ``process_group_backend`` says.
    """

    strategy_name: ClassVar[str] = "ddp"
    accepted_kwargs: ClassVar[tuple[str, ...]] = (*ParallelStrategy.accepted_kwargs, *_DDP_KWARGS)

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        device = self.root_device
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **self._backend_kwargs)

    def no_backward_sync(self, module: nn.Module) -> AbstractContextManager[Any]:
        """DDP's ``no_sync``: accumulate gradients locally, synchronize on the next backward outside it."""
        if not isinstance(module, DistributedDataParallel):
            raise StrategyError(
                f"no_backward_sync needs the module returned by setup_module (a DistributedDataParallel), "
                f"got {type(module).__name__}"
            )
        return module.no_sync()


class DDPSpawnStrategy(DDPStrategy):
    """Thin alias: [`DDPStrategy`][lite_strategies.DDPStrategy] as the ``ddp_spawn`` row (processes started with 'spawn')."""

    strategy_name: ClassVar[str] = "ddp_spawn"


class DDPForkStrategy(DDPStrategy):
    """Thin alias: [`DDPStrategy`][lite_strategies.DDPStrategy] as the ``ddp_fork`` row (processes started with 'fork')."""

    strategy_name: ClassVar[str] = "ddp_fork"
