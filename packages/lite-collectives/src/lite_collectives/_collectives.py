"""Functional collectives over tensors and collections of tensors.

Every function is the identity (or a no-op) when no process group is running, so call sites
stay free of branches. Inputs are never mutated. A collective that not every rank reaches
raises [`CollectiveTimeoutError`][lite_collectives.CollectiveTimeoutError] when the process
group's timeout runs out.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_leaves, tree_map_only

from lite_collectives._errors import CollectiveError, CollectiveTimeoutError, ProcessGroupBrokenError
from lite_collectives._lifecycle import as_timeout, group_timeout
from lite_collectives._ranks import is_initialized
from lite_collectives._watchdog import TIMEOUT_HINT, Watch, watch_for
from lite_collectives._wire import (
    SIGNATURE_WIDTH,
    HeaderBuffers,
    build_header,
    decode_meta,
    dtype_code,
    dtype_name,
    encode_meta,
    fits_header,
    read_heads,
    signature,
    unpack_header,
)

# Set to 1 to compare every rank's tensor shapes and dtypes before all_reduce (costs one
# extra collective per call); all_gather always compares them.
DEBUG_ENV = "LITE_COLLECTIVES_DEBUG"

# torch 2.13 renamed all_gather_into_tensor (the old name warns); the packages support older torch too.
_ALL_GATHER_SINGLE = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # then divided: gloo has no AVG
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}

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
    except (CollectiveError, CollectiveTimeoutError, ProcessGroupBrokenError):
        raise
    except RuntimeError as exc:
        if not _is_timeout(exc):
            raise
        watch = watch_for(group)
        limit = timeout or group_timeout()
        after = f" after {limit.total_seconds():g} s" if limit is not None else ""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        if watch is not None and limit is not None:
            raise watch.timed_out(limit.total_seconds(), first_line) from exc
        raise CollectiveTimeoutError(
            f"{op} timed out{after} on rank {_rank(group)} of {_size(group)}: not every rank reached this "
            f"{op} (a rank skipped it, crashed, or is busy elsewhere). Make every rank call the same "
            f"collectives in the same order. {TIMEOUT_HINT} Backend said: {first_line}"
        ) from exc


def _describe(meta: list[tuple[tuple[int, ...], str]]) -> str:
    return "[" + ", ".join(f"{dtype.removeprefix('torch.')}{list(shape)}" for shape, dtype in meta) + "]"


def _begin(op: str, tensors: list[torch.Tensor], group: Any) -> Watch | None:
    """Record where this rank is (in memory only) and return the watchdog, or None for a sub-group."""
    watch = watch_for(group)
    if watch is not None:
        watch.enter(op, tensors)
    return watch


def _end(watch: Watch | None) -> None:
    if watch is not None:
        watch.leave()


def _run(watch: Watch | None, op: str, group: Any, start: Callable[[], Any]) -> None:
    """Start one backend collective (``async_op=True``) and wait for it, bounded and watched."""
    try:
        work = start()
        if watch is None:
            work.wait()
        else:
            watch.wait(work)
    except RuntimeError as exc:
        with _bounded(op, group):
            raise exc


def _all_gather_into(
    watch: Watch | None, op: str, tensor: torch.Tensor, group: Any, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``(world_size, *tensor.shape)``: every rank's ``tensor``, in one backend collective.

    ``out`` (flat, ``world_size * tensor.numel()`` elements) receives it instead of a new tensor.
    """
    size = watch.size if watch is not None else _size(group)
    flat = tensor.reshape(-1)
    if out is None:
        out = flat.new_empty(size * flat.numel())
    _run(watch, op, group, lambda: _ALL_GATHER_SINGLE(out, flat, group=group, async_op=True))
    return out.view(size, *tensor.shape)


def _agree(everyone: torch.Tensor) -> bool:
    """Whether every row of ``everyone`` (one signature per rank) equals the first."""
    return bool((everyone == everyone[0]).all())


def _raise_mismatch(
    op: str, encoding: list[int], lengths: list[int], group: Any, watch: Watch | None, hint: str
) -> None:
    """Exchange every rank's full shape description (``lengths``: each one's length) and raise.

    Every rank sees the same table, so every rank raises together (no rank is left waiting).
    """
    device = _default_device(group)
    padded = torch.zeros(max(lengths), dtype=torch.int64, device=device)
    padded[: len(encoding)] = torch.tensor(encoding, dtype=torch.int64)
    full = _all_gather_into(watch, f"{op} (shape report)", padded, group).cpu().tolist()
    lines = "\n".join(f"  - rank {r}: {_describe(decode_meta(row))}" for r, row in enumerate(full))
    raise CollectiveError(
        f"{op} needs tensors of the same shape and dtype on every rank, but they differ "
        f"(this is rank {_rank(group)}):\n{lines}" + (f"\n{hint}" if hint else "")
    )


def _check_same_metadata(
    op: str, tensors: list[torch.Tensor], group: Any, watch: Watch | None, hint: str = ""
) -> None:
    """Compare every rank's tensor shapes and dtypes; on any difference raise, listing each rank's.

    One small tensor collective when they agree (a fixed-width signature); a second one, of the
    full descriptions, only to write the error.
    """
    encoding = encode_meta(tensors)
    mine = torch.tensor(signature(encoding), dtype=torch.int64, device=_default_device(group))
    everyone = _all_gather_into(watch, f"{op} (shape check)", mine, group)
    if not _agree(everyone):
        _raise_mismatch(op, encoding, everyone[:, 0].tolist(), group, watch, hint)


_MISMATCH_HINT = "Use all_gather_uneven(tensor) to gather tensors whose shapes differ across ranks."


def _gather_checked(
    tensors: list[torch.Tensor], group: Any, watch: Watch | None, inline: bool
) -> list[torch.Tensor] | None:
    """Exchange headers; raise on every rank if shapes differ; the gathered tensors when inlined."""
    encoding = encode_meta(tensors)
    inline = inline and fits_header(tensors)
    device = tensors[0].device if inline else _default_device(group)
    buffers = _take_header_buffers(group) if device.type == "cpu" else None
    try:
        header = build_header(encoding, tensors, inline, device, into=buffers.mine if buffers else None)
        gathered = _all_gather_into(
            watch, "all_gather", header, group, out=buffers.gathered if buffers else None
        )
    except BaseException:
        if buffers is not None:
            buffers.discard()  # the backend may still write into it: never hand it out again
        raise
    try:
        return _read_gathered(gathered, encoding, tensors, inline, group, watch)
    finally:
        if buffers is not None:
            buffers.give_back()


# Each process group's reusable header buffers; an entry goes with its group.
_header_buffers: weakref.WeakKeyDictionary[Any, HeaderBuffers] = weakref.WeakKeyDictionary()


def _take_header_buffers(group: Any) -> HeaderBuffers | None:
    """``group``'s reusable header buffers, or None while another call (another thread) holds them."""
    pg = dist.group.WORLD if group is None else group
    buffers = _header_buffers.get(pg)
    if buffers is None or not buffers.usable:
        buffers = _header_buffers[pg] = HeaderBuffers(_size(group))
    return buffers if buffers.take() else None


def _read_gathered(
    gathered: torch.Tensor,
    encoding: list[int],
    tensors: list[torch.Tensor],
    inline: bool,
    group: Any,
    watch: Watch | None,
) -> list[torch.Tensor] | None:
    """Check every rank's header in ``gathered``; raise on every rank if they differ; cut out inlined data."""
    heads = read_heads(gathered)
    first = heads[0]
    if any(head[:SIGNATURE_WIDTH] != first[:SIGNATURE_WIDTH] for head in heads):
        lengths = [head[0] for head in heads]
        _raise_mismatch("all_gather", encoding, lengths, group, watch, _MISMATCH_HINT)
    if any(head[SIGNATURE_WIDTH] != first[SIGNATURE_WIDTH] for head in heads):
        apart = [r for r, head in enumerate(heads) if not head[SIGNATURE_WIDTH]]
        raise CollectiveError(
            f"all_gather: ranks {apart} (this is rank {_rank(group)}) passed sync_grads=True or tensors on "
            "more than one device, the other ranks did not: every rank must call all_gather the same way."
        )
    return unpack_header(gathered, tensors) if inline else None


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each rank's gradient for this rank's slice.

    The sum is an all_reduce of the whole gradient, which every backend supports (gloo has
    no reduce_scatter).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, watch: Watch | None) -> torch.Tensor:
        ctx.group = group
        ctx.rank = _rank(group)
        return _all_gather_into(watch, "all_gather", tensor, group)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grads[0].contiguous().clone()
        op = "all_gather backward (all_reduce of gradients)"
        watch = _begin(op, [grad], ctx.group)
        try:
            _run(watch, op, ctx.group, lambda: dist.all_reduce(grad, group=ctx.group, async_op=True))
        finally:
            _end(watch)
        return grad[ctx.rank], None, None


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


def all_gather(
    data: Any, group: Any | None = None, sync_grads: bool = False, *, same_shapes: bool = False
) -> Any:
    """Gather a tensor, a number, or any collection of them from every rank.

    Each tensor of shape ``S`` comes back as one tensor of shape ``(world_size, *S)`` (rank order);
    Python numbers are turned into tensors first. In a single process (no process group) the
    data is returned as is, without the leading dimension, as LightningLite does.
    Shapes and dtypes must agree across ranks: every rank first gathers a fixed 256-byte header with
    its shapes' signature and, if they differ, every rank raises
    [`CollectiveError`][lite_collectives.CollectiveError] listing each rank's shapes (use
    [`all_gather_uneven`][lite_collectives.all_gather_uneven]). Small tensors (about 170 bytes
    together) travel inside that header: one collective in all. ``same_shapes=True`` skips the
    check (raw torch's cost) when the caller knows they agree. A mismatch is then the backend's
    to find: gloo aborts the process that receives more bytes than it expects (the others raise
    [`ProcessGroupBrokenError`][lite_collectives.ProcessGroupBrokenError] naming it), and a rank
    that receives fewer may first return a result holding garbage; a rank left waiting is the
    watchdog's to report.
    With ``sync_grads=True`` the result stays in the autograd graph and the backward pass sums
    every rank's gradient for this rank's tensor.

    Examples:
        >>> all_gather({"loss": torch.tensor(1.0)})  # single process: unchanged
        {'loss': tensor(1.)}
    """
    if not is_initialized():
        return _numbers_to_tensors(data, torch.device("cpu"))
    single = isinstance(data, torch.Tensor)
    if not single:
        data = _numbers_to_tensors(data, _default_device(group))
    tensors = [data] if single else _tensors(data)
    watch = _begin("all_gather", tensors, group)
    try:
        if not same_shapes:
            inlined = _gather_checked(tensors, group, watch, inline=not sync_grads)
            if inlined is not None:
                results = iter(inlined)
                return inlined[0] if single else tree_map_only(torch.Tensor, lambda _: next(results), data)

        def gather(tensor: torch.Tensor) -> torch.Tensor:
            if sync_grads:
                gathered: torch.Tensor = _AllGatherWithGrad.apply(tensor, group, watch)
                return gathered
            return _all_gather_into(watch, "all_gather", tensor.detach(), group)

        return gather(data) if single else tree_map_only(torch.Tensor, gather, data)
    finally:
        _end(watch)


# How many dimensions the first size exchange of all_gather_uneven carries; more take a second one.
_UNEVEN_DIMS = 6


def all_gather_uneven(tensor: torch.Tensor, group: Any | None = None) -> list[torch.Tensor]:
    """Gather one tensor per rank whose shape may differ across ranks; return each rank's exact tensor.

    One size exchange (a small integer tensor), then every rank's flattened tensor padded to the
    largest size is gathered, trimmed and reshaped to its rank's shape. Dtypes must agree.
    In a single process: ``[tensor]``.

    Examples:
        >>> all_gather_uneven(torch.arange(3))
        [tensor([0, 1, 2])]
    """
    if not isinstance(tensor, torch.Tensor):
        raise CollectiveError(f"all_gather_uneven takes one tensor, got {type(tensor).__name__}.")
    if not is_initialized():
        return [tensor]
    watch = _begin("all_gather_uneven", [], group)
    try:
        device = _default_device(group)
        dims = list(tensor.shape)
        head = [dtype_code(tensor.dtype), tensor.dim(), *dims[:_UNEVEN_DIMS]]
        head += [0] * (2 + _UNEVEN_DIMS - len(head))
        heads = (
            _all_gather_into(
                watch,
                "all_gather_uneven (size exchange)",
                torch.tensor(head, dtype=torch.int64, device=device),
                group,
            )
            .cpu()
            .tolist()
        )
        ndims = [row[1] for row in heads]
        if max(ndims) > _UNEVEN_DIMS:
            longest_ndim = max(ndims)
            mine = torch.zeros(longest_ndim, dtype=torch.int64, device=device)
            mine[: len(dims)] = torch.tensor(dims, dtype=torch.int64)
            rows = _all_gather_into(watch, "all_gather_uneven (shape exchange)", mine, group).cpu().tolist()
        else:
            rows = [row[2:] for row in heads]
        shapes = [tuple(row[:n]) for row, n in zip(rows, ndims)]
        codes = [row[0] for row in heads]
        if len(set(codes)) > 1:
            lines = "\n".join(
                f"  - rank {r}: {_describe([(shape, dtype_name(code))])}"
                for r, (shape, code) in enumerate(zip(shapes, codes))
            )
            raise CollectiveError(
                f"all_gather_uneven needs the same dtype on every rank, but they differ:\n{lines}"
            )
        numels = [math.prod(shape) for shape in shapes]
        longest = max(numels)
        flat = tensor.detach().reshape(-1)
        padded = torch.cat([flat, flat.new_zeros(longest - flat.numel())]) if flat.numel() < longest else flat
        gathered = _all_gather_into(watch, "all_gather_uneven", padded, group)
        return [gathered[r, :n].reshape(shape) for r, (n, shape) in enumerate(zip(numels, shapes))]
    finally:
        _end(watch)


def all_reduce(data: Any, op: Any = "sum", group: Any | None = None) -> Any:
    """Reduce a tensor, a number, or any collection of them across ranks; the input is not mutated.

    ``op`` is ``"sum"``, ``"mean"`` (alias ``"avg"``), ``"max"``, ``"min"`` or ``"product"``
    (alias ``"prod"``), case-insensitive, or a ``torch.distributed.ReduceOp``. A mean of integer
    tensors is returned as floating point. Results are new tensors, detached from autograd.
    Python numbers are turned into tensors. In a single process the data is returned as is.
    With ``LITE_COLLECTIVES_DEBUG=1`` every rank's shapes are compared first, and a mismatch
    raises [`CollectiveError`][lite_collectives.CollectiveError] listing them; without it, the
    watchdog reports a mismatch that makes the backend wait.

    Examples:
        >>> all_reduce(torch.tensor([1.0, 2.0]), op="mean")  # single process: unchanged
        tensor([1., 2.])
    """
    name = _resolve_op(op)
    if not is_initialized():
        return _numbers_to_tensors(data, torch.device("cpu"))
    single = isinstance(data, torch.Tensor)
    if not single:
        data = _numbers_to_tensors(data, _default_device(group))
    tensors = [data] if single else _tensors(data)
    reduce_op = _REDUCE_OPS[name]
    watch = _begin(f"all_reduce({name})", tensors, group)
    try:
        if _debug_enabled():
            _check_same_metadata("all_reduce", tensors, group, watch)

        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            result = tensor.detach().clone()
            if name == "mean" and not (result.is_floating_point() or result.is_complex()):
                result = result.to(torch.get_default_dtype())
            _run(
                watch,
                "all_reduce",
                group,
                lambda: dist.all_reduce(result, op=reduce_op, group=group, async_op=True),
            )
            return result / _size(group) if name == "mean" else result

        return reduce(data) if single else tree_map_only(torch.Tensor, reduce, data)
    finally:
        _end(watch)


def barrier(group: Any | None = None, timeout: timedelta | float | None = None) -> None:
    """Wait until every rank reaches this call. Single process: returns at once.

    ``timeout`` (a timedelta or seconds) bounds this wait on gloo, via a monitored barrier that
    names the ranks which did not arrive; otherwise the process group's timeout applies. Either
    way a barrier that not every rank reaches raises
    [`CollectiveTimeoutError`][lite_collectives.CollectiveTimeoutError].
    """
    limit = as_timeout(timeout, "barrier timeout") if timeout is not None else None
    if not is_initialized():
        return
    watch = _begin("barrier", [], group)
    try:
        if limit is not None and str(dist.get_backend(group)).lower() == "gloo":
            with _bounded("barrier", group, limit):
                dist.monitored_barrier(group=group, timeout=limit, wait_all_ranks=True)
        else:
            _run(watch, "barrier", group, lambda: dist.barrier(group=group, async_op=True))
    finally:
        _end(watch)
