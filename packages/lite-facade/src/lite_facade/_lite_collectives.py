"""LightningLite's collectives: all_gather, gather_for_metrics, all_reduce, broadcast, barrier, rank_zero_first, print."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any, overload

import torch

import lite_collectives
from lite_facade._lite_parts import LiteParts


class CollectiveMethods(LiteParts):
    """The collectives of [`LightningLite`][lite_facade.LightningLite] (a part of it, kept in its own module)."""

    # -- collectives ---------------------------------------------------------------------------------

    @overload
    def all_gather(
        self, data: torch.Tensor | float, group: Any = None, sync_grads: bool = False
    ) -> torch.Tensor: ...

    @overload
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any: ...

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors (or collections of them, or Python numbers) from every process.

        Each tensor gains a leading dimension of size ``world_size``; in a single process it is
        returned as it is.
        """
        self._ensure_environment("all_gather()")
        if isinstance(data, (int, float, bool)):
            data = torch.tensor(data, device=self.device)
        return self._strategy.all_gather(data, group=group, sync_grads=sync_grads)

    def gather_for_metrics(self, data: Any) -> Any:
        """Gather every process's evaluation outputs into exactly the dataset's samples, each once.

        Use it on what you computed over a loader set up with ``setup_dataloaders(..., even=False)``:
        each process passes its tensors (first dimension: its samples; the processes may have
        different numbers of them), or a dict / list / tuple of such tensors, and every process
        gets the whole back, concatenated along the first dimension in the order the samples were
        dealt out (for a loader that does not shuffle, the dataset's order). In one process the
        data come back as they are.
        """
        self._ensure_environment("gather_for_metrics()")
        if self.world_size == 1:
            return data
        if isinstance(data, torch.Tensor):
            return _interleave(lite_collectives.all_gather_uneven(data.contiguous()))
        if isinstance(data, dict):
            return {key: self.gather_for_metrics(value) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self.gather_for_metrics(value) for value in data)
        raise TypeError(
            f"gather_for_metrics() takes a tensor or a dict / list / tuple of tensors, got {type(data).__name__}"
        )

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        """Reduce tensors (or collections of them, or Python numbers) over every process.

        ``reduce_op`` is ``"mean"``, ``"sum"``, ``"max"``, ``"min"`` or ``"product"``; the input is
        not modified. In a single process the data come back unchanged.
        """
        self._ensure_environment("all_reduce()")
        if isinstance(data, (int, float, bool)):
            data = torch.tensor(data, device=self.device)
        return self._strategy.all_reduce(data, op=reduce_op, group=group)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` (any picklable object or tensor) from process ``src`` to all the others."""
        self._ensure_environment("broadcast()")
        return self._strategy.broadcast(obj, src=src)

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process has reached this call."""
        self._ensure_environment("barrier()")
        self._strategy.barrier(name=name)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        """Run the block on global rank 0 first, then on the other processes (e.g. to download a data set once).

        With ``local=True``, local rank 0 of each node goes first (a download to each node's own disk).
        The others wait in a barrier, bounded by the process group's timeout.
        """
        self._ensure_environment("rank_zero_first()")
        first = (self.local_rank if local else self.global_rank) == 0
        if not first:
            self.barrier("rank_zero_first")
        try:
            yield
        finally:  # also when the block raised on rank 0: the others are not left waiting
            if first:
                self.barrier("rank_zero_first")

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the process with global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Undo the unpadded sampler's dealing: sample ``j`` of rank ``r`` was position ``j * world_size + r``."""
    if any(p.dim() == 0 for p in parts):
        raise ValueError(
            "gather_for_metrics(): the tensors need a first (samples) dimension; got a 0-d tensor"
        )
    lengths = [p.shape[0] for p in parts]
    if max(lengths) - min(lengths) > 1 or lengths != sorted(lengths, reverse=True):
        # Not dealt out by the unpadded sampler: keep each rank's block, in rank order.
        return torch.cat(parts)
    longest = lengths[0]
    padded = [
        torch.cat([p, p.new_zeros((longest - p.shape[0], *p.shape[1:]))]) if p.shape[0] < longest else p
        for p in parts
    ]
    stacked = torch.stack(padded, dim=1)  # (longest, world_size, ...)
    return stacked.reshape(longest * len(parts), *parts[0].shape[1:])[: sum(lengths)]
