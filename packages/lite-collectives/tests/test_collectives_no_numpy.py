"""lite_collectives in processes where numpy cannot be imported (torch does not need it, nor may we)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lite_testing import free_port

EXAMPLE = Path(__file__).with_name("readme_example.py")
# numpy is blocked before torch is imported, so even a machine that has numpy runs without it.
BLOCK_NUMPY = (
    "import sys, runpy; sys.modules['numpy'] = None; "
    "import torch; from torch.distributed import distributed_c10d; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


def test_readme_example_in_two_processes_without_numpy() -> None:
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", BLOCK_NUMPY, str(EXAMPLE)],
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, out
        assert f"rank {rank}/2: total=3.0 ranks=[0, 1] config={{'lr': 0.1}}" in out
