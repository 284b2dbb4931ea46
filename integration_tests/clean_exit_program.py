"""A tiny two-process run whose only job is to end well; run by test_clean_exit.py.

    python clean_exit_program.py STRATEGY [RUNS]

The wrapped model stays referenced to the end of the process (a module global), the case that
used to abort at interpreter exit. With a launcher that starts processes itself (ddp_spawn,
ddp_fork) the run is repeated RUNS times in this one process, each with fresh ranks.
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
        return float(total.item())


if __name__ == "__main__":
    strategy = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    if strategy == "ddp_fork":
        # DDP imports torch._dynamo on first use (seconds): once here, every forked rank has it.
        import torch._dynamo
    for _ in range(runs):
        Tiny(accelerator="cpu", strategy=strategy, devices=2).run()
    print("finished", flush=True)
