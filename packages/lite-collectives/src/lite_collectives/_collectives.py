"""Functional collectives over tensors and collections of tensors.

Every function is the identity (or a no-op) when no process group is running, so call sites
stay free of branches. Inputs are never mutated. A collective that not every rank reaches
raises :class:`CollectiveTimeoutError` when the process group's timeout runs out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_leaves, tree_map_only

from lite_collectives._errors import CollectiveError, CollectiveTimeoutError
from lite_collectives._lifecycle import as_timeout, group_timeout
from lite_collectives._ranks import is_initialized

# Set to 1 to compare every rank's tensor shapes and dtypes before all_reduce (costs one
# extra collective per call); all_gather always compares them.
DEBUG_ENV = "LITE_COLLECTIVES_DEBUG"

_OPS = {
    "sum": "sum",
    "mean": "mean",
    "avg": "mean",
    "max": "max",
    "min": "min",
    "product": "product",
    "prod": "product",
}


# ---------------------------------------------------------------------------- helpers


def _size(group: Any) -> int:
    return int(dist.get_world_size(group))


def _rank(group: Any) -> int:
    return int(dist.get_rank(group))


def _default_device(group: Any) -> torch.device:
    """Where a new tensor must live for ``group``'s backend (nccl: the current CUDA device)."""
    if str(dist.get_backend(group)).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _numbers_to_tensors(data: Any, device: torch.device) -> Any:
    return tree_map_only((int, float), lambda x: torch.tensor(x, device=device), data)


def _tensors(data: Any) -> list[torch.Tensor]:
    return [x for x in tree_leaves(data) if isinstance(x, torch.Tensor)]


def _debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text or "monitoredbarrier" in text


@contextmanager
def _bounded(op: str, group: Any, timeout: timedelta | None = None) -> Iterator[None]:
    """Turn a backend timeout during ``op`` into a CollectiveTimeoutError naming ``op``."""
    try:
        yield
    except (CollectiveError, CollectiveTimeoutError):
        raise
    except RuntimeError as exc:
        if not _is_timeout(exc):
            raise
        limit = timeout or group_timeout()
        after = f" after {limit.total_seconds():g} s" if limit is not None else ""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise CollectiveTimeoutError(
            f"{op} timed out{after} on rank {_rank(group)} of {_size(group)}: not every rank reached this "
            f"{op} (a rank skipped it, crashed, or is busy elsewhere). Make every rank call the same "
            f"collectives in the same order, or raise the timeout (init_process_group(timeout=...)). "
            f"Backend said: {first_line}"
        ) from exc


def _describe(meta: list[tuple[tuple[int, ...], str]]) -> str:
    return "[" + ", ".join(f"{dtype.removeprefix('torch.')}{list(shape)}" for shape, dtype in meta) + "]"


def _check_same_metadata(op: str, tensors: list[torch.Tensor], group: Any, hint: str = "") -> None:
    """Compare every rank's tensor shapes and dtypes; on any difference raise, listing each rank's.

    Every rank sees the same gathered table, so every rank raises together (no rank is left waiting).
    """
    mine = [(tuple(t.shape), str(t.dtype)) for t in tensors]
    everyone: list[Any] = [None] * _size(group)
    with _bounded(f"{op} (shape check)", group):
        dist.all_gather_object(everyone, mine, group=group)
    if all(meta == everyone[0] for meta in everyone):
        return
    lines = "\n".join(f"  - rank {r}: {_describe(meta)}" for r, meta in enumerate(everyone))
    raise CollectiveError(
        f"{op} needs tensors of the same shape and dtype on every rank, but they differ "
        f"(this is rank {_rank(group)}):\n{lines}" + (f"\n{hint}" if hint else "")
    )


def _gather_tensor(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(_size(group))]
    dist.all_gather(out, tensor, group=group)
    return torch.stack(out)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each rank's gradient for this rank's slice.

    The sum is an all_reduce of the whole gradient, which every backend supports (gloo has
    no reduce_scatter).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        ctx.rank = _rank(group)
        return _gather_tensor(tensor, group)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grads[0].contiguous().clone()
        with _bounded("all_gather backward (all_reduce of gradients)", ctx.group):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def _resolve_op(op: Any) -> str:
    """Canonical op name for a string (case-insensitive) or a torch ReduceOp."""
    if isinstance(op, str) and op.lower() in _OPS:
        return _OPS[op.lower()]
    if isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)):
        pairs = [
            (dist.ReduceOp.SUM, "sum"),
            (dist.ReduceOp.AVG, "mean"),
            (dist.ReduceOp.MAX, "max"),
            (dist.ReduceOp.MIN, "min"),
            (dist.ReduceOp.PRODUCT, "product"),
        ]
        for reduce_op, name in pairs:
            if op == reduce_op:
                return name
    raise CollectiveError(
        f"unknown reduce op {op!r}; accepted: {', '.join(_OPS)} "
        "(case-insensitive) or torch.distributed.ReduceOp SUM/AVG/MAX/MIN/PRODUCT."
    )


# ---------------------------------------------------------------------------- public functions


def all_gather(data: Any, group: Any | None = None, sync_grads: bool = False) -> Any:
    """Gather a tensor, a number, or any collection of them from every rank.

    Each tensor of shape ``S`` comes back as one tensor of shape ``(world_size, *S)`` (rank order);
    Python numbers are turned into tensors first. In a single process (no process group) the
    data is returned as is, without the leading dimension, as LightningLite does.
    Shapes and dtypes must agree across ranks: if they differ, every rank raises
    :class:`CollectiveError` listing each rank's shapes (use :func:`all_gather_uneven`).
    With ``sync_grads=True`` the result stays in the autograd graph and the backward pass sums
    every rank's gradient for this rank's tensor.

    >>> all_gather({"loss": torch.tensor(1.0)})  # single process: unchanged
    {'loss': tensor(1.)}
    """
    if not is_initialized():
        return _numbers_to_tensors(data, torch.device("cpu"))
    data = _numbers_to_tensors(data, _default_device(group))
    _check_same_metadata(
        "all_gather",
        _tensors(data),
        group,
        hint="Use all_gather_uneven(tensor) to gather tensors whose shapes differ across ranks.",
    )

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        with _bounded("all_gather", group):
            if sync_grads:
                gathered: torch.Tensor = _AllGatherWithGrad.apply(tensor, group)
                return gathered
            return _gather_tensor(tensor.detach(), group)

    return tree_map_only(torch.Tensor, gather, data)


def all_gather_uneven(tensor: torch.Tensor, group: Any | None = None) -> list[torch.Tensor]:
    """Gather one tensor per rank whose shape may differ across ranks; return each rank's exact tensor.

    Pads every rank's flattened tensor to the largest size, gathers, then trims and reshapes
    each slice to its rank's shape. Dtypes must agree. In a single process: ``[tensor]``.

    >>> all_gather_uneven(torch.arange(3))
    [tensor([0, 1, 2])]
    """
    if not isinstance(tensor, torch.Tensor):
        raise CollectiveError(f"all_gather_uneven takes one tensor, got {type(tensor).__name__}.")
    if not is_initialized():
        return [tensor]
    mine = (tuple(tensor.shape), str(tensor.dtype))
    everyone: list[Any] = [None] * _size(group)
    with _bounded("all_gather_uneven (shape exchange)", group):
        dist.all_gather_object(everyone, mine, group=group)
    if len({dtype for _, dtype in everyone}) > 1:
        lines = "\n".join(f"  - rank {r}: {_describe([meta])}" for r, meta in enumerate(everyone))
        raise CollectiveError(
            f"all_gather_uneven needs the same dtype on every rank, but they differ:\n{lines}"
        )
    numels = [math.prod(shape) for shape, _ in everyone]
    longest = max(numels)
    flat = tensor.detach().reshape(-1)
    padded = torch.cat([flat, flat.new_zeros(longest - flat.numel())]) if flat.numel() < longest else flat
    with _bounded("all_gather_uneven", group):
        gathered = _gather_tensor(padded, group)
    return [gathered[r, :n].reshape(shape) for r, (n, (shape, _)) in enumerate(zip(numels, everyone))]


def all_reduce(data: Any, op: Any = "sum", group: Any | None = None) -> Any:
    """Reduce a tensor, a number, or any collection of them across ranks; the input is not mutated.

    ``op`` is ``"sum"``, ``"mean"`` (alias ``"avg"``), ``"max"``, ``"min"`` or ``"product"``
    (alias ``"prod"``), case-insensitive, or a ``torch.distributed.ReduceOp``. A mean of integer
    tensors is returned as floating point. Results are new tensors, detached from autograd.
    Python numbers are turned into tensors. In a single process the data is returned as is.
    With ``LITE_COLLECTIVES_DEBUG=1`` every rank's shapes are compared first, and a mismatch
    raises :class:`CollectiveError` listing them (otherwise a mismatch is undefined behaviour
    of the backend).

    >>> all_reduce(torch.tensor([1.0, 2.0]), op="mean")  # single process: unchanged
    tensor([1., 2.])
    """
    name = _resolve_op(op)
    if not is_initialized():
        return _numbers_to_tensors(data, torch.device("cpu"))
    data = _numbers_to_tensors(data, _default_device(group))
    if _debug_enabled():
        _check_same_metadata("all_reduce", _tensors(data), group)
    reduce_op = {
        "sum": dist.ReduceOp.SUM,
        "mean": dist.ReduceOp.SUM,  # then divided: gloo has no AVG
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
        "product": dist.ReduceOp.PRODUCT,
    }[name]

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor.detach().clone()
        if name == "mean" and not (result.is_floating_point() or result.is_complex()):
            result = result.to(torch.get_default_dtype())
        with _bounded("all_reduce", group):
            dist.all_reduce(result, op=reduce_op, group=group)
        return result / _size(group) if name == "mean" else result

    return tree_map_only(torch.Tensor, reduce, data)


def broadcast(obj: Any, src: int = 0, group: Any | None = None) -> Any:
    """Send ``obj`` from global rank ``src`` to every rank and return it on each.

    A tensor travels as a tensor (arriving on the receiver's device: the device of the tensor
    it passed, else the backend's device), whatever shape the receivers passed; anything else
    is pickled. Receivers may pass ``None``. The input is not mutated; ``src`` gets ``obj`` back.
    In a single process ``obj`` is returned as is.

    >>> broadcast({"lr": 0.1})
    {'lr': 0.1}
    """
    if not is_initialized():
        return obj
    size = dist.get_world_size()
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < size:
        raise CollectiveError(f"broadcast src must be a global rank in 0..{size - 1}, got {src!r}.")
    me = dist.get_rank()
    if me == src:
        header: Any = (
            ("tensor", tuple(obj.shape), obj.dtype) if isinstance(obj, torch.Tensor) else ("object", obj)
        )
    else:
        header = None
    box = [header]
    with _bounded("broadcast", group):
        dist.broadcast_object_list(box, src=src, group=group)
    header = box[0]
    if header[0] == "object":
        return obj if me == src else header[1]
    _, shape, dtype = header
    if me == src:
        buffer = obj.detach().contiguous()
    else:
        device = obj.device if isinstance(obj, torch.Tensor) else _default_device(group)
        buffer = torch.empty(shape, dtype=dtype, device=device)
    with _bounded("broadcast", group):
        dist.broadcast(buffer, src=src, group=group)
    return obj if me == src else buffer


def gather_object(obj: Any, dst: int = 0, group: Any | None = None) -> list[Any] | None:
    """Collect one picklable object per rank on global rank ``dst``: the list there, ``None`` elsewhere.

    In a single process: ``[obj]``.

    >>> gather_object("hello")
    ['hello']
    """
    if not is_initialized():
        return [obj]
    size = dist.get_world_size()
    if isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < size:
        raise CollectiveError(f"gather_object dst must be a global rank in 0..{size - 1}, got {dst!r}.")
    out: list[Any] | None = [None] * _size(group) if dist.get_rank() == dst else None
    with _bounded("gather_object", group):
        dist.gather_object(obj, out, dst=dst, group=group)
    return out


def all_gather_object(obj: Any, group: Any | None = None) -> list[Any]:
    """Collect one picklable object per rank on every rank, in rank order. Single process: ``[obj]``.

    >>> all_gather_object(3)
    [3]
    """
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * _size(group)
    with _bounded("all_gather_object", group):
        dist.all_gather_object(out, obj, group=group)
    return out


def barrier(group: Any | None = None, timeout: timedelta | float | None = None) -> None:
    """Wait until every rank reaches this call. Single process: returns at once.

    ``timeout`` (a timedelta or seconds) bounds this wait on gloo, via a monitored barrier that
    names the ranks which did not arrive; otherwise the process group's timeout applies. Either
    way a barrier that not every rank reaches raises :class:`CollectiveTimeoutError`.
    """
    limit = as_timeout(timeout, "barrier timeout") if timeout is not None else None
    if not is_initialized():
        return
    with _bounded("barrier", group, limit):
        if limit is not None and str(dist.get_backend(group)).lower() == "gloo":
            dist.monitored_barrier(group=group, timeout=limit, wait_all_ranks=True)
        else:
            dist.barrier(group=group)
