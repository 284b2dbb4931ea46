"""Collectives of Python objects and tensors of unknown shape (broadcast, gather_object, all_gather_object),
serialised into uint8 tensors by lite itself: no numpy needed."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from lite_collectives._collectives import _all_gather_into, _begin, _default_device, _end, _run
from lite_collectives._errors import CollectiveError
from lite_collectives._ranks import is_initialized
from lite_collectives._watchdog import Watch
from lite_collectives._wire import (
    DTYPES,
    dtype_code,
    object_to_tensor,
    tensor_to_object,
)

# A tensor broadcast sends one header: [is_object, dtype code, ndim, nbytes or numel, *shape].
_HEADER_DIMS = 8


def broadcast(obj: Any, src: int = 0, group: Any | None = None) -> Any:
    """Send ``obj`` from global rank ``src`` to every rank and return it on each.

    A tensor travels as a tensor (arriving on the receiver's device: the device of the tensor
    it passed, else the backend's device), whatever shape the receivers passed; anything else
    is pickled (by lite_collectives itself: numpy is not needed). Receivers may pass ``None``.
    The input is not mutated; ``src`` gets ``obj`` back. In a single process ``obj`` is returned as is.

    Examples:
        >>> broadcast({"lr": 0.1})
        {'lr': 0.1}
    """
    if not is_initialized():
        return obj
    size = dist.get_world_size()
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < size:
        raise CollectiveError(f"broadcast src must be a global rank in 0..{size - 1}, got {src!r}.")
    me = dist.get_rank()
    device = _default_device(group)
    watch = _begin(f"broadcast(src={src})", [], group)
    try:
        header = torch.zeros(4 + _HEADER_DIMS, dtype=torch.int64, device=device)
        payload: torch.Tensor | None = None
        if me == src:
            as_tensor = (
                isinstance(obj, torch.Tensor) and obj.dim() <= _HEADER_DIMS and dtype_code(obj.dtype) >= 0
            )
            if as_tensor:
                values = [0, dtype_code(obj.dtype), obj.dim(), obj.numel(), *obj.shape]
            else:
                payload = object_to_tensor(obj, device)
                values = [1, 0, 0, payload.numel()]
            header[: len(values)] = torch.tensor(values, dtype=torch.int64)
        _run(watch, "broadcast", group, lambda: dist.broadcast(header, src=src, group=group, async_op=True))
        kind, code, ndim, count, *dims = header.cpu().tolist()
        if kind == 1:
            buffer = payload if payload is not None else torch.empty(count, dtype=torch.uint8, device=device)
            _run(
                watch, "broadcast", group, lambda: dist.broadcast(buffer, src=src, group=group, async_op=True)
            )
            return obj if me == src else tensor_to_object(buffer, count)
        if me == src:
            tensor = obj.detach().contiguous()
        else:
            where = obj.device if isinstance(obj, torch.Tensor) else device
            tensor = torch.empty(tuple(dims[:ndim]), dtype=DTYPES[code], device=where)
        _run(watch, "broadcast", group, lambda: dist.broadcast(tensor, src=src, group=group, async_op=True))
        return obj if me == src else tensor
    finally:
        _end(watch)


def _gather_sizes(watch: Watch | None, op: str, payload: torch.Tensor, group: Any) -> list[int]:
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=payload.device)
    return [int(n) for n in _all_gather_into(watch, f"{op} (sizes)", size, group).flatten().tolist()]


def _padded(payload: torch.Tensor, longest: int) -> torch.Tensor:
    if payload.numel() == longest:
        return payload
    return torch.cat([payload, payload.new_zeros(longest - payload.numel())])


def gather_object(obj: Any, dst: int = 0, group: Any | None = None) -> list[Any] | None:
    """Collect one picklable object per rank on global rank ``dst``: the list there, ``None`` elsewhere.

    Objects are pickled by lite_collectives (no numpy). In a single process: ``[obj]``.

    Examples:
        >>> gather_object("hello")
        ['hello']
    """
    if not is_initialized():
        return [obj]
    size = dist.get_world_size()
    if isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < size:
        raise CollectiveError(f"gather_object dst must be a global rank in 0..{size - 1}, got {dst!r}.")
    watch = _begin(f"gather_object(dst={dst})", [], group)
    try:
        payload = object_to_tensor(obj, _default_device(group))
        sizes = _gather_sizes(watch, "gather_object", payload, group)
        mine = _padded(payload, max(sizes))
        here = dist.get_rank() == dst
        out = [torch.empty_like(mine) for _ in sizes] if here else None
        _run(
            watch, "gather_object", group, lambda: dist.gather(mine, out, dst=dst, group=group, async_op=True)
        )
        if out is None:
            return None
        return [tensor_to_object(buffer, n) for buffer, n in zip(out, sizes)]
    finally:
        _end(watch)


def all_gather_object(obj: Any, group: Any | None = None) -> list[Any]:
    """Collect one picklable object per rank on every rank, in rank order. Single process: ``[obj]``.

    Objects are pickled by lite_collectives (no numpy): one size exchange, then one gather of
    the padded bytes.

    Examples:
        >>> all_gather_object(3)
        [3]
    """
    if not is_initialized():
        return [obj]
    watch = _begin("all_gather_object", [], group)
    try:
        payload = object_to_tensor(obj, _default_device(group))
        sizes = _gather_sizes(watch, "all_gather_object", payload, group)
        gathered = _all_gather_into(watch, "all_gather_object", _padded(payload, max(sizes)), group)
        return [tensor_to_object(gathered[r], n) for r, n in enumerate(sizes)]
    finally:
        _end(watch)
