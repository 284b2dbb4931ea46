"""Collectives in real gloo process groups on 127.0.0.1 (2 and 3 processes).

Each spawned group runs several checks and returns what it saw; the parent asserts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import lite_collectives as lc
from lite_collectives import CollectiveTimeoutError
from lite_testing import run_processes


def _raises(fn: Any, *args: Any, **kwargs: Any) -> str:
    """Run a call that must fail; return 'Type: message' (exceptions cross processes as text)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "did not raise"


def _many_checks(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "queries": (lc.world_size(), lc.global_rank(), lc.is_global_zero(), lc.local_rank())
    }
    x = torch.tensor([rank, 10 * rank], dtype=torch.float32)
    out["tensor"] = lc.all_gather(x)
    out["input_kept"] = torch.equal(x, torch.tensor([rank, 10 * rank], dtype=torch.float32))
    out["collection"] = lc.all_gather({"a": torch.tensor(rank), "b": [x, "keep", rank]})
    out["uneven"] = lc.all_gather_uneven(torch.full((rank + 1, 2), float(rank)))
    out["uneven_ndim"] = lc.all_gather_uneven(torch.arange(rank + 1).reshape((1,) * rank + (rank + 1,)))
    out["mismatch"] = _raises(lc.all_gather, torch.zeros(rank + 1))
    # Small gathers travel inside the fixed-size header, large ones after it: both kinds, mixed
    # dtypes, and a mismatch between a rank whose tensor fits the header and one whose does not.
    mixed = {
        "flag": torch.tensor([rank % 2 == 0, True]),
        "half": torch.full((2, 3), rank + 0.5, dtype=torch.bfloat16),
        "count": torch.tensor(rank * 1000, dtype=torch.int64),
        "z": torch.tensor([complex(rank, -rank)], dtype=torch.complex128),
        "t": torch.arange(6, dtype=torch.float32).reshape(2, 3).t() + rank,  # not contiguous
    }
    out["mixed"] = lc.all_gather(mixed)
    out["large"] = lc.all_gather(torch.arange(300, dtype=torch.float64) + rank)
    out["many"] = lc.all_gather([torch.full((20,), float(rank)) for _ in range(12)])  # > one header
    out["inline_vs_large"] = _raises(lc.all_gather, torch.zeros(4 if rank == 0 else 400))
    # Long descriptions travel as a hash in the header's signature: a difference still shows.
    out["mismatch_hashed"] = _raises(lc.all_gather, [torch.zeros(2, 2)] * 3 + [torch.zeros(1 + rank)])
    out["grads_apart"] = _raises(lc.all_gather, torch.ones(2, requires_grad=True), sync_grads=rank == 0)
    out["after_gather_mismatch"] = lc.all_gather(torch.tensor([rank]))
    # A small gather's result owns its memory (never a borrowed Python buffer, which gloo's thread
    # could free during interpreter exit and abort the process): a normal tensor that can grow.
    small = lc.all_gather(torch.ones(3) * rank)
    out["small_owns_memory"] = small.untyped_storage().resizable()
    out["small_resized"] = tuple(small.resize_(world * 3 + 1).shape)
    # The header's buffers are reused from call to call: a result never aliases them.
    first = lc.all_gather(torch.tensor([rank, 1]))
    out["reuse_second"] = lc.all_gather(torch.tensor([rank + 100, 2, 3]))
    out["reuse_first"] = first
    # While another call holds them (a second thread), a call uses fresh buffers.
    from lite_collectives._collectives import _header_buffers

    buffers = _header_buffers.get(dist.group.WORLD)
    assert buffers is not None and buffers.take()
    try:
        out["buffers_held"] = lc.all_gather(torch.tensor([rank * 2.0]))
    finally:
        buffers.give_back()
    out["dtype_mismatch"] = _raises(
        lc.all_gather_uneven, torch.zeros(1, dtype=torch.float64 if rank else torch.float32)
    )
    y = torch.tensor([rank + 1.0, -(rank + 1.0)])
    for op in ("sum", "mean", "avg", "max", "min", "product", dist.ReduceOp.SUM):
        out[f"reduce_{op if isinstance(op, str) else 'torch_sum'}"] = lc.all_reduce(y, op=op)
    out["reduce_input_kept"] = torch.equal(y, torch.tensor([rank + 1.0, -(rank + 1.0)]))
    out["reduce_int_mean"] = lc.all_reduce(torch.tensor([rank]), op="mean")
    out["reduce_collection"] = lc.all_reduce({"n": rank, "t": [torch.tensor(float(rank))]}, op="sum")
    out["broadcast_tensor"] = lc.broadcast(torch.arange(3.0) * 7 if rank == 1 else None, src=1)
    out["broadcast_shape"] = lc.broadcast(torch.ones(rank + 2) * rank, src=0)
    out["broadcast_object"] = lc.broadcast({"from": rank, "items": [rank]}, src=world - 1)
    out["broadcast_bad_src"] = _raises(lc.broadcast, 1, src=world)
    out["gather_object"] = lc.gather_object(("rank", rank), dst=0)
    out["all_gather_object"] = lc.all_gather_object({"rank": rank})
    lc.barrier()
    lc.barrier(timeout=30)
    # Debug mode: every rank's shapes are compared before all_reduce, so a mismatch is an error.
    os.environ["LITE_COLLECTIVES_DEBUG"] = "1"  # this is a child process: nothing leaks
    out["reduce_mismatch"] = _raises(lc.all_reduce, {"t": torch.zeros(2 + rank)})
    out["after_mismatch"] = lc.all_reduce(torch.ones(1))  # the group still works
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_collectives_across_ranks(world: int) -> None:
    results = run_processes(_many_checks, world, timeout=30)
    ranks = range(world)
    ys = [torch.tensor([r + 1.0, -(r + 1.0)]) for r in ranks]
    for rank, out in enumerate(results):
        assert out["queries"] == (world, rank, rank == 0, rank)
        assert torch.equal(out["tensor"], torch.tensor([[r, 10.0 * r] for r in ranks]))
        assert out["input_kept"] and out["reduce_input_kept"]
        col = out["collection"]
        assert torch.equal(col["a"], torch.arange(world))
        assert torch.equal(col["b"][0], out["tensor"]) and col["b"][1] == "keep"
        assert torch.equal(col["b"][2], torch.arange(world))  # the number became a tensor, gathered
        for r in ranks:
            assert torch.equal(out["uneven"][r], torch.full((r + 1, 2), float(r)))
            assert torch.equal(out["uneven_ndim"][r], torch.arange(r + 1).reshape((1,) * r + (r + 1,)))
        assert out["mismatch"].startswith("CollectiveError: all_gather needs tensors of the same shape")
        for r in ranks:
            assert f"rank {r}: [float32[{r + 1}]]" in out["mismatch"]
        assert "all_gather_uneven" in out["mismatch"]
        mixed = out["mixed"]
        assert torch.equal(mixed["flag"], torch.tensor([[r % 2 == 0, True] for r in ranks]))
        assert torch.equal(
            mixed["half"], torch.stack([torch.full((2, 3), r + 0.5) for r in ranks]).bfloat16()
        )
        assert torch.equal(mixed["count"], torch.tensor([r * 1000 for r in ranks]))
        assert torch.equal(
            mixed["z"], torch.tensor([[complex(r, -r)] for r in ranks], dtype=torch.complex128)
        )
        expected_t = torch.stack([torch.arange(6.0).reshape(2, 3).t() + r for r in ranks])
        assert torch.equal(mixed["t"], expected_t) and mixed["t"].is_contiguous()
        assert torch.equal(
            out["large"], torch.stack([torch.arange(300.0, dtype=torch.float64) + r for r in ranks])
        )
        assert all(torch.equal(t, torch.tensor([[float(r)] * 20 for r in ranks])) for t in out["many"])
        assert out["inline_vs_large"].startswith(
            "CollectiveError: all_gather needs tensors of the same shape"
        )
        assert "rank 0: [float32[4]]" in out["inline_vs_large"]
        assert "rank 1: [float32[400]]" in out["inline_vs_large"]
        assert out["mismatch_hashed"].startswith(
            "CollectiveError: all_gather needs tensors of the same shape"
        )
        for r in ranks:
            assert (
                f"rank {r}: [float32[2, 2], float32[2, 2], float32[2, 2], float32[{r + 1}]]"
                in out["mismatch_hashed"]
            )
        assert out["grads_apart"].startswith("CollectiveError: all_gather: ranks [")
        assert "sync_grads=True" in out["grads_apart"]
        assert torch.equal(out["after_gather_mismatch"], torch.arange(world).view(world, 1))
        assert out["small_owns_memory"] and out["small_resized"] == (world * 3 + 1,)
        assert torch.equal(out["reuse_first"], torch.tensor([[r, 1] for r in ranks]))
        assert torch.equal(out["reuse_second"], torch.tensor([[r + 100, 2, 3] for r in ranks]))
        assert torch.equal(out["buffers_held"], torch.tensor([[r * 2.0] for r in ranks]))
        assert "CollectiveError" in out["dtype_mismatch"] and "rank 1: [float64[1]]" in out["dtype_mismatch"]
        stacked = torch.stack(ys)
        assert torch.equal(out["reduce_sum"], stacked.sum(0))
        assert torch.equal(out["reduce_torch_sum"], stacked.sum(0))
        assert torch.allclose(out["reduce_mean"], stacked.mean(0))
        assert torch.allclose(out["reduce_avg"], stacked.mean(0))
        assert torch.equal(out["reduce_max"], stacked.max(0).values)
        assert torch.equal(out["reduce_min"], stacked.min(0).values)
        assert torch.equal(out["reduce_product"], stacked.prod(0))
        assert out["reduce_int_mean"].is_floating_point()
        assert torch.allclose(out["reduce_int_mean"], torch.tensor([sum(ranks) / world]))
        assert torch.equal(out["reduce_collection"]["n"], torch.tensor(sum(ranks)))
        assert torch.equal(out["reduce_collection"]["t"][0], torch.tensor(float(sum(ranks))))
        assert torch.equal(out["broadcast_tensor"], torch.arange(3.0) * 7)
        assert torch.equal(out["broadcast_shape"], torch.zeros(2))  # rank 0's shape, whatever others passed
        assert out["broadcast_object"] == {"from": world - 1, "items": [world - 1]}
        assert out["broadcast_bad_src"].startswith(
            f"CollectiveError: broadcast src must be a global rank in 0..{world - 1}"
        )
        assert out["gather_object"] == ([("rank", r) for r in ranks] if rank == 0 else None)
        assert out["all_gather_object"] == [{"rank": r} for r in ranks]
        assert out["reduce_mismatch"].startswith("CollectiveError: all_reduce needs tensors")
        for r in ranks:
            assert f"rank {r}: [float32[{2 + r}]]" in out["reduce_mismatch"]
        assert torch.equal(out["after_mismatch"], torch.tensor([float(world)]))


def _gradients(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([rank + 1.0, 2.0 * (rank + 1)], requires_grad=True)
    gathered = lc.all_gather(x, sync_grads=True)
    # Rank s's loss: (s + 1) * sum of squares of everything gathered.
    loss = (rank + 1) * (gathered**2).sum()
    loss.backward()
    assert x.grad is not None
    return x.detach(), x.grad


def test_all_gather_sync_grads_sums_every_rank_gradient() -> None:
    world = 2
    results = run_processes(_gradients, world, timeout=30)
    weight = sum(s + 1 for s in range(world))  # d/dx_r of sum_s (s+1) * ||x_r||^2 = 2 x_r * sum_s (s+1)
    for x, grad in results:
        assert torch.allclose(grad, 2 * x * weight)


def _skip_collective(rank: int, world: int, op: str, flag: str) -> str:
    if rank == 0:
        message = _raises(lc.barrier, timeout=2) if op == "barrier" else _raises(lc.all_reduce, torch.ones(2))
        Path(flag).write_text("done")
        return message
    # Rank 1 skips the collective but stays alive (a dead peer is a different failure).
    deadline = time.monotonic() + 30
    while not Path(flag).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ""


@pytest.mark.parametrize(("op", "seconds"), [("barrier", 2), ("all_reduce", 3)])
def test_collective_not_reached_by_every_rank_times_out(tmp_path: Path, op: str, seconds: int) -> None:
    # The process group's timeout is 3 s; the barrier is given its own 2 s.
    message = run_processes(_skip_collective, 2, op, str(tmp_path / "flag"), timeout=3)[0]
    assert message.startswith(
        f"{CollectiveTimeoutError.__name__}: {op} timed out after {seconds} s on rank 0 of 2"
    )
    assert "not every rank reached" in message
    if op == "barrier":
        assert "Ranks 1 failed to pass monitoredBarrier" in message
