"""A tiny two-process run whose only job is to end well; run by test_clean_exit.py.

    python clean_exit_program.py STRATEGY [RUNS]
    python -m torch.distributed.run --nproc_per_node 2 clean_exit_program.py embedded
    MASTER_ADDR=127.0.0.1 MASTER_PORT=P NODE_RANK=N python clean_exit_program.py two_nodes

The wrapped model stays referenced to the end of the process (a module global), the case that
used to abort at interpreter exit, and the last collectives before the exit are a small
all_gather and an object broadcast (their buffers were once freed by gloo's thread during the
exit, which aborted the process). With a launcher that starts processes itself (ddp_spawn,
ddp_fork) the run is repeated RUNS times in this one process, each with fresh ranks.
``embedded``: torchrun started the processes and the facade is used without run(), as a
framework embedding it does; ``two_nodes``: one node of a two-node job (``num_nodes=2``, one
process per node), started twice on 127.0.0.1 with NODE_RANK 0 and 1.
"""

import sys

import torch

from lite_facade import LightningLite

KEEP = []  # the wrapped models, alive until the interpreter exits


class Tiny(LightningLite):
    def run(self) -> float:
        model = self.setup(torch.nn.Linear(2, 1))
        loss = model(torch.ones(4, 2)).sum()
        self.backward(loss)
        total = self.all_reduce(torch.tensor([1.0]), reduce_op="sum")
        self.barrier()
        KEEP.append(model)
        _last_collectives(self)
        return float(total.item())


def _last_collectives(lite: LightningLite) -> None:
    gathered = lite.all_gather(torch.tensor([float(lite.global_rank)]))
    assert gathered.flatten().tolist() == [0.0, 1.0], gathered
    assert lite.broadcast({"from": lite.global_rank}) == {"from": 0}


if __name__ == "__main__":
    strategy = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    if strategy == "ddp_fork":
        # DDP imports torch._dynamo on first use (seconds): once here, every forked rank has it.
        import torch._dynamo
    if strategy == "two_nodes":
        Tiny(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2).run()
    elif strategy == "embedded":
        lite = Tiny(accelerator="cpu", strategy="ddp", devices=2)
        model = lite.setup(torch.nn.Linear(2, 1))
        lite.backward(model(torch.ones(4, 2)).sum())
        KEEP.append(model)
        _last_collectives(lite)
    else:
        for _ in range(runs):
            Tiny(accelerator="cpu", strategy=strategy, devices=2).run()
    print("finished", flush=True)
