"""The README's stand-alone example; nox runs it with `python -m torch.distributed.run --nproc_per_node 2`."""

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from lite_data import DeviceDataLoader, distributed_dataloader, seed_everything

seed_everything(42, workers=True)
dist.init_process_group("gloo")  # MASTER_ADDR, RANK, WORLD_SIZE ... come from torchrun
rank, world_size = dist.get_rank(), dist.get_world_size()

loader = DataLoader(list(range(64)), batch_size=8, shuffle=True, num_workers=2)
loader = distributed_dataloader(loader, num_replicas=world_size, rank=rank)
loader = DeviceDataLoader(loader, device="cpu")  # e.g. torch.device("cuda", local_rank)

epochs = []
for _ in range(2):  # set_epoch is called for you: each epoch is reshuffled
    seen = torch.cat(list(loader))  # every rank sees 64 / world_size samples
    shares = [torch.empty_like(seen) for _ in range(world_size)]
    dist.all_gather(shares, seen)  # tensors only: torch's object collectives would need numpy
    everything = sorted(torch.cat(shares).tolist())
    assert everything == list(range(64)), "each sample exactly once per epoch"
    epochs.append([share.tolist() for share in shares])
assert epochs[0] != epochs[1], "a new order each epoch"

if rank == 0:
    print(f"{world_size} ranks covered the dataset once per epoch; seed {os.environ['PL_GLOBAL_SEED']}")
dist.destroy_process_group()
