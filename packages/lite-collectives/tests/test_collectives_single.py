"""Without a process group every collective is the identity, and queries read the environment."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import lite_collectives as lc
from lite_collectives import CollectiveError, default_backend


def test_import_is_cheap_and_self_contained() -> None:
    code = (
        "import sys, lite_collectives; "
        "print(sorted(m for m in sys.modules if m.startswith('lite') and not m.startswith('lite_collectives'))); "
        "print('torch.distributed.nn' in sys.modules, 'mpi4py' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[:2] == ["[]", "False False"]


def test_public_api_is_exported() -> None:
    for name in lc.__all__:
        assert hasattr(lc, name), name


def test_collectives_are_identity_in_a_single_process() -> None:
    assert not lc.is_initialized()
    x = torch.arange(4.0)
    data = {"x": x, "nested": [x, ("label", 3)]}
    assert lc.all_gather(x) is x
    gathered = lc.all_gather(data)
    assert gathered["x"] is x and gathered["nested"][1][0] == "label"
    assert torch.equal(gathered["nested"][1][1], torch.tensor(3))  # numbers become tensors
    assert lc.all_gather(x, sync_grads=True) is x
    assert lc.all_reduce(x, op="mean") is x
    assert torch.equal(lc.all_reduce(2.5, op="max"), torch.tensor(2.5))
    assert torch.equal(x, torch.arange(4.0))
    assert lc.all_gather_uneven(x) == [x]
    obj = {"a": 1}
    assert lc.broadcast(obj) is obj
    assert lc.broadcast(x, src=0) is x
    assert lc.gather_object(obj) == [obj]
    assert lc.all_gather_object(obj) == [obj]
    assert lc.barrier() is None
    assert lc.barrier(timeout=1.0) is None


@pytest.mark.parametrize("op", ["sum", "SUM", "mean", "avg", "max", "min", "product", "prod"])
def test_known_ops_are_accepted(op: str) -> None:
    assert torch.equal(lc.all_reduce(torch.ones(2), op=op), torch.ones(2))


@pytest.mark.parametrize(
    "op", [dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX, dist.ReduceOp.MIN, dist.ReduceOp.PRODUCT]
)
def test_torch_reduce_ops_are_accepted(op: object) -> None:
    assert torch.equal(lc.all_reduce(torch.ones(2), op=op), torch.ones(2))


@pytest.mark.parametrize("op", ["median", "", None, 3, dist.ReduceOp.BAND])
def test_unknown_op_fails_early_listing_accepted(op: object) -> None:
    with pytest.raises(CollectiveError, match="accepted: sum, mean"):
        lc.all_reduce(torch.ones(2), op=op)


@pytest.mark.parametrize("timeout", [0, -1, "5s", timedelta(0)])
def test_barrier_rejects_bad_timeout(timeout: object) -> None:
    with pytest.raises(CollectiveError, match="barrier timeout must be a positive"):
        lc.barrier(timeout=timeout)  # type: ignore[arg-type]


def test_all_gather_uneven_takes_a_tensor() -> None:
    with pytest.raises(CollectiveError, match="one tensor, got list"):
        lc.all_gather_uneven([torch.ones(1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, (1, 0, 0, 0, True)),
        ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "NODE_RANK": "1"}, (4, 2, 0, 1, False)),
        ({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "3"}, (4, 0, 0, 3, True)),
        ({"NODE_RANK": "2", "GROUP_RANK": "3"}, (1, 0, 0, 2, True)),
    ],
)
def test_queries_read_environment_without_process_group(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: tuple[object, ...]
) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    got = (lc.world_size(), lc.global_rank(), lc.local_rank(), lc.node_rank(), lc.is_global_zero())
    assert got == expected


@pytest.mark.parametrize(
    ("device_type", "backend"),
    [("cpu", "gloo"), ("CUDA", "nccl"), ("cuda", "nccl"), ("mps", "gloo"), ("xla", "xla")],
)
def test_default_backend(device_type: str, backend: str) -> None:
    assert default_backend(device_type) == backend


def test_default_backend_rejects_unknown_device() -> None:
    with pytest.raises(CollectiveError, match="accepted: cpu, cuda, mps, xla"):
        default_backend("tpu-v9")


def test_tensors_handed_to_the_backend_own_their_memory() -> None:
    # A tensor borrowing a Python buffer (torch.frombuffer) needs the GIL when freed, and cannot
    # be resized; the header and the pickled objects are made in torch's own memory.
    from lite_collectives._wire import build_header, encode_meta, object_to_tensor, read_heads

    tensors = [torch.arange(3.0), torch.tensor([True, False])]
    header = build_header(encode_meta(tensors), tensors, True, torch.device("cpu"))
    assert header.untyped_storage().resizable()
    assert read_heads(header)[0][-1] == 1  # the "data inside" flag
    payload = object_to_tensor({"step": 3}, torch.device("cpu"))
    assert payload.untyped_storage().resizable() and payload.dtype == torch.uint8
