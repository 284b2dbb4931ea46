"""lite-devices on its own: pick the devices, move a batch and a model there."""

import os
from collections import namedtuple

import torch

from lite_devices import DeviceError, available_accelerators, move_to_device, parse_devices

print("available here:", available_accelerators())  # e.g. ('cuda', 'cpu')

# The spellings of LightningLite's flags: devices=, accelerator=, gpus=, tpu_cores=.
print(parse_devices(2, "cpu").devices)  # two CPU processes
# Decide for a machine with 4 GPUs without being on one: pass the inventory.
print(parse_devices("1, 3", "gpu", device_counts={"cuda": 4}).indices)  # (1, 3)
try:
    parse_devices(gpus=[0, 0], device_counts={"cuda": 4})
except DeviceError as err:  # a ValueError saying what was asked, why, and what is accepted
    print(err)

# One device per process (under torchrun each process takes the one at its local rank).
selection = parse_devices("auto", accelerator="auto")
local_rank = int(os.environ.get("LOCAL_RANK", 0))
device = selection.devices[local_rank % selection.num_devices]

Batch = namedtuple("Batch", ["x", "y"])
batch = {"inputs": Batch(torch.randn(4, 3), torch.arange(4)), "ids": ["a", "b", "c", "d"]}
batch = move_to_device(batch, device, non_blocking=True)
model = move_to_device(torch.nn.Linear(3, 2), device)
out = model(batch["inputs"].x)
assert out.device.type == device.type and isinstance(batch["inputs"], Batch)
print(f"rank {local_rank}: {selection.accelerator} {device}, output {tuple(out.shape)}")
