"""Start-up cost: import time of each package over ``import torch``, and launch-to-first-step with 2 processes.

    python bench/bench_launch.py [--repeats 7] [--json out.json]

Imports: the whole-process wall time of ``python -c "<import>"``, median of ``--repeats`` runs,
the statements interleaved (torch, facade, devices, ... torch, facade, ...), minus the median of
``import torch``; and, less noisy, the time the import takes in a fresh process right after
``import torch`` (timed inside that process). Launch: the wall time from starting ``python script.py`` to rank 0 finishing
its first DDP training step (2 CPU processes), for LightningLite's ``ddp`` (re-runs the script),
``ddp_spawn`` and ``ddp_fork``, against plain torch scripts doing the same with
``torch.multiprocessing`` (spawn, fork) and with ``torchrun``; and the ``lite run`` console script
(``python -m lite_facade run --accelerator cpu --devices 2 lite.py``, torchrun inside) against torchrun.
With ``--peers``: the import of Lightning Fabric, LightningLite 1.8 and Accelerate (those installed),
and each one's launch of the same kind (Fabric and LightningLite 1.8: ``ddp``, ``ddp_spawn``,
``ddp_fork``; Accelerate: ``notebook_launcher`` (fork) and ``accelerate launch``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _peers import parse as parse_peers

PEER_IMPORTS = {
    "fabric": ("lightning_fabric", "from lightning_fabric import Fabric"),
    "ll18": ("lightning_lite", "from lightning_lite import LightningLite"),
    "accelerate": ("accelerate", "from accelerate import Accelerator"),
}

IMPORTS = {
    "torch": "import torch",
    "lite_facade": "from lite_facade import LightningLite",
    "lite_devices": "import lite_devices",
    "lite_precision": "import lite_precision",
    "lite_collectives": "import lite_collectives",
    "lite_data": "import lite_data",
    "lite_strategies": "import lite_strategies",
}

_STEP = """
import os, sys, time
import torch
from torch import nn

def first_step(model, opt, backward=None):
    x, y = torch.randn(32, 32), torch.randn(32, 1)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    (backward or (lambda l: l.backward()))(loss)
    opt.step()
    if int(os.environ.get("RANK", "0")) == 0:
        print("FIRST_STEP", time.time(), flush=True)
"""

LITE_SCRIPT = (
    _STEP
    + """
from lite_facade import LightningLite

class Lite(LightningLite):
    def run(self):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
        model, opt = self.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        if self.global_rank == 0:
            os.environ["RANK"] = "0"
        first_step(model, opt, self.backward)

if __name__ == "__main__":
    Lite(accelerator="cpu", strategy=sys.argv[1], devices=2).run()
"""
)

FABRIC_SCRIPT = (
    _STEP
    + """
from _fabric import Fabric

def train(fabric):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    os.environ["RANK"] = str(fabric.global_rank)
    first_step(model, opt, fabric.backward)

if __name__ == "__main__":
    Fabric(accelerator="cpu", strategy=sys.argv[1], devices=2).launch(train)
"""
)

# the standalone package, or the `lightning` umbrella one
FABRIC_IMPORT = """try:
    from lightning_fabric import Fabric
except ImportError:
    from lightning.fabric import Fabric
"""

# the same script on LightningLite 1.8, whose spawned processes have no RANK variable: set it for each
LL18_SCRIPT = LITE_SCRIPT.replace(
    "from lite_facade import LightningLite", "from lightning_lite import LightningLite"
).replace(
    'if self.global_rank == 0:\n            os.environ["RANK"] = "0"',
    'os.environ["RANK"] = str(self.global_rank)',
)

ACCELERATE_SCRIPT = (
    _STEP
    + """
from accelerate import Accelerator, notebook_launcher

def train():
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    os.environ["RANK"] = str(acc.process_index)
    first_step(model, opt, acc.backward)

if __name__ == "__main__":
    if sys.argv[1] == "fork":  # in-process: torch elastic with fork
        notebook_launcher(train, num_processes=2, use_port=sys.argv[2])
    else:  # under `accelerate launch`
        train()
"""
)

TORCH_MP_SCRIPT = (
    _STEP
    + """
import socket
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, port):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)))
    first_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    dist.destroy_process_group()

if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port,), nprocs=2, start_method=sys.argv[1])
"""
)

TORCHRUN_SCRIPT = (
    _STEP
    + """
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)))
first_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
dist.destroy_process_group()
"""
)


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def increment(code: str) -> float:
    """Seconds that ``code`` takes in a fresh process that has already imported torch."""
    timed = f"import time, torch; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return float(
        subprocess.run([sys.executable, "-c", timed], check=True, capture_output=True, text=True).stdout
    )


def imports(repeats: int, peers: list[str] = ()) -> dict[str, dict[str, float]]:  # type: ignore[assignment]
    statements = {**IMPORTS, **{PEER_IMPORTS[p][0]: PEER_IMPORTS[p][1] for p in peers}}
    times: dict[str, list[float]] = {name: [] for name in statements}
    inside: dict[str, list[float]] = {name: [] for name in statements}
    # Warm the file cache, and compile each module's bytecode as `pip install` does: a machine
    # with PYTHONDONTWRITEBYTECODE set (or a fresh editable install) would otherwise compile every
    # module from source on every import and time that instead.
    for code in statements.values():
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        )
    for _ in range(repeats):
        for name, code in statements.items():
            times[name].append(wall(code))
            inside[name].append(increment(code) if name != "torch" else 0.0)
    torch_median = statistics.median(times["torch"])
    return {
        name: {
            "median_s": statistics.median(v),
            "over_torch_s": statistics.median(v) - torch_median,
            "after_torch_s": statistics.median(inside[name]),
        }
        for name, v in times.items()
    }


def to_first_step(cmd: list[str], cwd: str) -> float:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    stamps = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("FIRST_STEP")]
    # What is timed is the first step: a process that aborts at interpreter shutdown after it (gloo
    # on a loaded machine, plain torchrun included) does not change that time, so it is kept.
    if not stamps:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    return stamps[0] - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launches(repeats: int, only: list[str] | None = None, peers: list[str] = ()) -> dict[str, dict[str, Any]]:  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in (
            ("lite.py", LITE_SCRIPT),
            ("torch_mp.py", TORCH_MP_SCRIPT),
            ("torchrun.py", TORCHRUN_SCRIPT),
            ("fabric.py", FABRIC_SCRIPT),
            ("_fabric.py", FABRIC_IMPORT),
            ("ll18.py", LL18_SCRIPT),
            ("acc.py", ACCELERATE_SCRIPT),
        ):
            Path(tmp, name).write_text(text)
        py = sys.executable
        torchrun = [
            py,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
        ]
        accelerate_launch = [py, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
        accelerate_launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        accelerate_launch += ["--main_process_port", str(_free_port()), "acc.py", "launch"]
        cases = {
            # lite name: (lite command, baseline name, baseline command, {peer: the peer's same launch})
            "ddp": (
                [py, "lite.py", "ddp"],
                "torchrun",
                [*torchrun, "torchrun.py"],
                {"fabric": [py, "fabric.py", "ddp"], "ll18": [py, "ll18.py", "ddp"]},
            ),
            "ddp_spawn": (
                [py, "lite.py", "ddp_spawn"],
                "torch mp spawn",
                [py, "torch_mp.py", "spawn"],
                {"fabric": [py, "fabric.py", "ddp_spawn"], "ll18": [py, "ll18.py", "ddp_spawn"]},
            ),
            "ddp_fork": (
                [py, "lite.py", "ddp_fork"],
                "torch mp fork",
                [py, "torch_mp.py", "fork"],
                {
                    "fabric": [py, "fabric.py", "ddp_fork"],
                    "ll18": [py, "ll18.py", "ddp_fork"],
                    "accelerate": [py, "acc.py", "fork", str(_free_port())],
                },
            ),
            # the `lite` console script (torchrun inside) against plain torchrun on the same kind of
            # script; `accelerate launch` is Accelerate's launcher of that kind
            "lite run (ddp)": (
                [py, "-m", "lite_facade", "run", "--accelerator", "cpu", "--devices", "2", "lite.py", "ddp"],
                "torchrun",
                [*torchrun, "torchrun.py"],
                {"accelerate": accelerate_launch},
            ),
        }
        if only:
            cases = {name: case for name, case in cases.items() if name in only}
        times: dict[str, dict[str, list[float]]] = {name: {} for name in cases}
        for _ in range(repeats):
            for name, (lite_cmd, _, base_cmd, peer_cmds) in cases.items():
                runs = {"baseline": base_cmd, "lite": lite_cmd}
                runs.update({peer: cmd for peer, cmd in peer_cmds.items() if peer in peers})
                for who, cmd in runs.items():
                    times[name].setdefault(who, []).append(to_first_step(cmd, tmp))
    return {
        name: {
            "baseline": cases[name][1],
            "lite_s": statistics.median(times[name]["lite"]),
            "baseline_s": statistics.median(times[name]["baseline"]),
            "peers": {
                who: statistics.median(v) for who, v in times[name].items() if who not in ("lite", "baseline")
            },
        }
        for name in cases
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--launch-repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--launch-only", action="store_true", help="skip the import timings")
    parser.add_argument(
        "--only", action="append", help="run only this launch case (repeatable), e.g. 'lite run (ddp)'"
    )
    parser.add_argument(
        "--peers", default="none", help="fabric,ll18,accelerate; 'all' (those installed); 'none'"
    )
    args = parser.parse_args()
    peers = parse_peers(args.peers)
    result = {
        "imports": {} if args.launch_only else imports(args.repeats, peers),
        "launch": launches(args.launch_repeats, args.only, peers),
    }
    print(
        "| import | median (s) | over `import torch` (s) | after torch, in-process (s) |\n|---|---:|---:|---:|"
    )
    for name, r in result["imports"].items():
        print(f"| {name} | {r['median_s']:.3f} | {r['over_torch_s']:+.3f} | {r['after_torch_s']:.3f} |")
    print(
        "\n| lite strategy | lite to first step (s) | baseline | baseline (s) | lite / baseline |\n|---|---:|---|---:|---:|"
    )
    for name, r in result["launch"].items():
        print(
            f"| {name} | {r['lite_s']:.2f} | {r['baseline']} | {r['baseline_s']:.2f} | {r['lite_s'] / r['baseline_s']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
