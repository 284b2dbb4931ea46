"""lite-collectives alone, under torchrun: no facade, no strategy, just the collectives.

    python -m torch.distributed.run --nproc_per_node 2 examples/collectives_torchrun.py

torchrun starts the processes and sets RANK, WORLD_SIZE, MASTER_ADDR, ...; lite_collectives
detects that environment, joins the process group (gloo on the CPU) and offers the verbs.
"""

import torch

import lite_collectives as lc


def main() -> None:
    environment = lc.detect_environment()  # TorchElasticEnvironment under torchrun
    lc.init_process_group(environment, device_type="cpu")
    rank, world = lc.global_rank(), lc.world_size()

    # Sum and mean over every process; the input is not modified.
    value = torch.tensor([float(rank + 1)])
    total = lc.all_reduce(value, op="sum")
    mean = lc.all_reduce(value, op="mean")

    # Gather tensors of the same shape (a new leading dimension) and of different lengths.
    gathered = lc.all_gather(torch.tensor([rank]))
    uneven = lc.all_gather_uneven(torch.arange(rank + 1))

    # Any picklable object from rank 0 to everyone, and one object from each rank.
    config = lc.broadcast({"lr": 0.1, "chosen_by": rank} if rank == 0 else None, src=0)
    names = lc.all_gather_object(f"rank-{rank}")

    lc.barrier()
    if lc.is_global_zero():
        print(f"environment: {type(environment).__name__}, world size {world}")
        print(f"all_reduce sum: {total.item()}, mean: {mean.item()}")
        print(f"all_gather: {gathered.flatten().tolist()}")
        print(f"all_gather_uneven: {[t.tolist() for t in uneven]}")
        print(f"broadcast: {config}")
        print(f"all_gather_object: {names}")
    lc.destroy_process_group()


if __name__ == "__main__":
    main()
