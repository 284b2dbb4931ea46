"""Shared by lite-strategies' tests: a tiny deterministic training run and a launcher script."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lite_strategies

# torch sets TORCHINDUCTOR_CACHE_DIR when the first optimizer is built; do it at import, not
# inside a test, so the lite_testing environment-leak guard does not blame the test.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

TESTS_DIR = str(Path(__file__).resolve().parent)
STEPS = 4
GLOBAL_BATCH = 8


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 4, generator=g), torch.randn(GLOBAL_BATCH, 2, generator=g)


def train(strategy: lite_strategies.Strategy, out: str | None = None, fail: str = "") -> dict[str, Any]:
    """Train STEPS SGD steps on this rank's share of one global batch; return the parameters.

    ``fail``: "raise:<rank>" raises on that rank, "kill:<rank>" SIGKILLs it, "hang" writes
    ``<out>.<rank>.pid`` and sleeps (for interrupt tests), "block" does the same except that rank
    0 waits in a collective (a barrier the others never reach) instead of sleeping.
    """
    rank = strategy.global_rank
    if fail in ("hang", "block"):
        Path(f"{out}.{rank}.pid").write_text(str(os.getpid()))
        if fail == "block" and rank == 0:
            strategy.barrier()  # blocks in C++ (gloo) until the others come or are gone
        time.sleep(120)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, (optimizer,) = strategy.setup_module_and_optimizers(model, [optimizer])
    x, y = global_batch()
    shard = strategy.distributed_sampler_kwargs or {"num_replicas": 1, "rank": 0}
    x = strategy.batch_to_device(x[shard["rank"] :: shard["num_replicas"]])
    y = strategy.batch_to_device(y[shard["rank"] :: shard["num_replicas"]])
    for step in range(STEPS):
        if step == 2 and fail == f"raise:{rank}":
            raise RuntimeError(f"boom on rank {rank}")
        if step == 2 and fail == f"kill:{rank}":
            os.kill(os.getpid(), signal.SIGKILL)
        loss = nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()
    state = strategy.get_module_state_dict(model)
    if out is not None:
        strategy.save_checkpoint(out, {"model": model, "world_size": strategy.world_size})
    return {"params": state, "world_size": strategy.world_size, "rank": rank}


def _reference(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    return train(lite_strategies.SingleDeviceStrategy())["params"]


def reference_params() -> dict[str, torch.Tensor]:
    """The parameters after the same steps in one process on the whole batch.

    Computed in a forked child: once a CUDA build of torch has run backward in this process,
    no later test could fork a process that runs backward (torch's Autograd-and-Fork rule).
    """
    from lite_testing import run_processes

    result: dict[str, torch.Tensor] = run_processes(_reference, 1, init=False, timeout=60)[0]
    return result


def assert_params_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key].cpu(), expected[key], rtol=1e-5, atol=1e-6)


SCRIPT = """
import os
import sys
sys.path.insert(0, {tests_dir!r})
import torch
import lite_strategies
from strategies_testutil import train

def main():
    name, devices, num_nodes, out, fail = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    strategy = lite_strategies.get_strategy_spec(name).build(devices=[torch.device("cpu")] * devices, num_nodes=num_nodes)
    result = strategy.launcher.launch(train, strategy, out, fail)
    # one write: the ranks share stdout
    os.write(1, f"RESULT-WORLD-SIZE {{result['world_size']}} RANK {{result['rank']}}\\n".encode())
{guard}
"""


def write_script(directory: Path, guarded: bool = True, name: str = "train_script.py") -> Path:
    guard = 'if __name__ == "__main__":\n    main()\n' if guarded else "main()\n"
    path = directory / name
    path.write_text(SCRIPT.format(tests_dir=TESTS_DIR, guard=guard))
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment without rank variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARS}
    env.update(extra)
    return env


_RANK_VARS = {
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
}  # fmt: skip


def python() -> str:
    return sys.executable
