"""The CUDA paths for real; they run only where a GPU is (the rules themselves are tested without one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lite_devices import (
    ACCELERATORS,
    DeviceError,
    auto_accelerator,
    available_accelerators,
    move_to_device,
    parse_devices,
)
from lite_testing import run_if


@run_if(min_cuda_gpus=1)
def test_cuda_is_found_and_preferred():
    count = torch.cuda.device_count()
    assert ACCELERATORS["cuda"].device_count() == count
    assert available_accelerators()[0] == "cuda"
    assert auto_accelerator().name == "cuda"
    assert parse_devices().devices == (torch.device("cuda", 0),)
    assert parse_devices(-1, "gpu").indices == tuple(range(count))
    assert parse_devices("auto", "cuda").num_devices == count
    assert parse_devices(gpus=f"{count - 1},").devices == (torch.device("cuda", count - 1),)


@run_if(min_cuda_gpus=1)
def test_cuda_out_of_range_on_the_real_machine():
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"has {count}"):
        parse_devices(count + 1, "gpu")


@dataclasses.dataclass(frozen=True)
class _Batch:
    x: torch.Tensor
    y: list


@run_if(min_cuda_gpus=1)
def test_move_to_cuda_and_back():
    gpu = torch.device("cuda", 0)
    batch = {"b": _Batch(torch.arange(4.0), [torch.ones(2)]), "n": 3}
    on_gpu = move_to_device(batch, gpu, non_blocking=True)
    torch.cuda.synchronize()
    assert on_gpu["b"].x.device == gpu and on_gpu["b"].y[0].device == gpu and on_gpu["n"] == 3
    assert move_to_device(on_gpu["b"].x, gpu) is on_gpu["b"].x
    back = move_to_device(on_gpu, "cpu")
    assert torch.equal(back["b"].x, batch["b"].x)
    m = nn.Linear(2, 2)
    assert move_to_device(m, "cuda") is m and m.weight.is_cuda
