"""The README's stand-alone example. Run it alone or with: python -m torch.distributed.run --nproc_per_node 2 readme_example.py"""

import torch

import lite_collectives as lc

lc.init_process_group()  # reads torchrun / SLURM / ... variables; a single process works too
rank, world = lc.global_rank(), lc.world_size()

total = lc.all_reduce(torch.tensor([rank + 1.0]), op="sum")  # 1 + 2 + ... + world
ranks = lc.all_gather(torch.tensor([rank]))  # shape (world, 1)
parts = lc.all_gather_uneven(torch.ones(rank + 1))  # rank r sends r + 1 elements
config = lc.broadcast({"lr": 0.1} if lc.is_global_zero() else None)  # any picklable object
lc.barrier(timeout=30)  # fails with CollectiveTimeoutError instead of hanging
print(f"rank {rank}/{world}: total={total.item()} ranks={ranks.flatten().tolist()} config={config}")

assert total.item() == world * (world + 1) / 2
assert ranks.flatten().tolist() == list(range(world))
assert [p.numel() for p in parts] == [r + 1 for r in range(world)]
assert config == {"lr": 0.1}
lc.destroy_process_group()
