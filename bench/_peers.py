"""The peers timed next to lite, when they are installed: Lightning Fabric 2, LightningLite 1.8, Accelerate.

None of them is a dependency of lite: the benchmarks skip a peer that does not import and say so
in RESULTS.md. ``probe`` tries each import in a fresh process (so a peer that breaks on import
cannot break the run) and returns its version or the error it raised.

The helpers below are the peers' sides of bench_step.py's two-process runs and of
bench_collectives.py; each imports its peer only when called.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

# name: (label, import statement, expression giving its version)
PEERS = {
    "fabric": ("Lightning Fabric", "import lightning_fabric as m", "m.__version__"),
    "ll18": ("LightningLite 1.8", "import lightning_lite as m", "m.__version__"),
    "accelerate": ("Accelerate", "import accelerate as m", "m.__version__"),
}
LABELS = {"torch": "raw torch", "lite": "lite", **{name: row[0] for name, row in PEERS.items()}}


def probe(names: list[str] | None = None) -> dict[str, dict[str, str]]:
    """``{peer: {"label", "version"}}`` for each peer that imports, ``{"label", "error"}`` for the rest."""
    found = {}
    for name in names or list(PEERS):
        label, statement, version = PEERS[name]
        proc = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", f"{statement}; print({version})"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            found[name] = {"label": label, "version": proc.stdout.strip().splitlines()[-1]}
        else:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            found[name] = {"label": label, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return found


def parse(text: str) -> list[str]:
    """The ``--peers`` argument of the bench scripts: ``all`` (those that import), ``none``, or a list."""
    if text in ("", "none"):
        return []
    if text == "all":
        return [name for name, row in probe().items() if "version" in row]
    names = text.split(",")
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return names


def fabric_class() -> Any:
    try:
        from lightning_fabric import Fabric
    except ImportError:  # the `lightning` umbrella package
        from lightning.fabric import Fabric
    return Fabric


def ll18_precision(precision: str) -> Any:
    """LightningLite 1.8 knows the old spellings only."""
    return {"32-true": 32, "bf16-mixed": "bf16", "16-mixed": 16}[precision]


# -- two processes (bench_step.py --ddp) ------------------------------------------------------------


def _teardown() -> None:
    """Fabric's and LightningLite 1.8's launchers leave the process group up when the function returns;
    gloo then may abort at interpreter exit (SIGABRT), which their launchers report as a failure."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _alternate(steps: Any, size: str, n: int, chunks: int) -> dict[str, float]:
    """Time ``steps`` and, in the same processes and in alternation, a raw DDP loop (as _lite_ddp does)."""
    import torch
    from bench_step import chunked, make, raw_steps
    from torch.nn.parallel import DistributedDataParallel

    raw_model, raw_opt, rx, ry = make(size, torch.device("cpu"))
    raw = raw_steps(DistributedDataParallel(raw_model), raw_opt, rx, ry, "32-true")
    peer_times, raw_times = [], []
    for _ in range(max(1, chunks // 2)):
        peer_times.append(chunked(steps, n, 2))
        raw_times.append(chunked(raw, n, 2))
    return {"peer": statistics.median(peer_times), "torch_same_process": statistics.median(raw_times)}


def _loop(model: Any, opt: Any, x: Any, y: Any, backward: Any) -> Any:
    from torch import nn

    def steps(k: int) -> None:
        for _ in range(k):
            opt.zero_grad()
            backward(nn.functional.mse_loss(model(x), y))
            opt.step()

    return steps


def _fabric_work(fabric: Any, size: str, n: int, chunks: int) -> dict[str, float]:
    import torch
    from bench_step import make

    torch.set_num_threads(1)
    model, opt, x, y = make(size, fabric.device)
    model, opt = fabric.setup(model, opt)
    result = _alternate(_loop(model, opt, x, y, fabric.backward), size, n, chunks)
    _teardown()
    return result


def fabric_ddp_pair(start_method: str, size: str, n: int, chunks: int) -> dict[str, float]:
    """Rank 0's step times in a Fabric ``ddp_<start_method>`` pair (``fabric.launch(fn)``)."""
    fabric = fabric_class()(accelerator="cpu", strategy=f"ddp_{start_method}", devices=2)
    return fabric.launch(_fabric_work, size, n, chunks)


def ll18_ddp_pair(start_method: str, size: str, n: int, chunks: int) -> dict[str, float]:
    """Rank 0's step times in a LightningLite 1.8 ``ddp_<start_method>`` pair."""
    from _ll18 import DDPBench

    return DDPBench(accelerator="cpu", strategy=f"ddp_{start_method}", devices=2).run(size, n, chunks)


def _accelerate_work(size: str, n: int, chunks: int, out: str) -> None:
    import torch
    from accelerate import Accelerator
    from bench_step import make

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    model, opt, x, y = make(size, acc.device)
    model, opt = acc.prepare(model, opt)
    result = _alternate(_loop(model, opt, x, y, acc.backward), size, n, chunks)
    if acc.process_index == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    acc.wait_for_everyone()


def accelerate_ddp_pair(start_method: str, size: str, n: int, chunks: int, port: int) -> dict[str, float]:
    """Rank 0's step times in an Accelerate pair started by ``notebook_launcher`` (fork only)."""
    import tempfile

    from accelerate import notebook_launcher

    if start_method != "fork":
        raise ValueError("Accelerate launches in-process with fork only (notebook_launcher)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        notebook_launcher(_accelerate_work, (size, n, chunks, out), num_processes=2, use_port=str(port))
        with open(out) as f:
            return dict(json.load(f))


# -- collectives, inside an initialized 2-process gloo group (bench_collectives.py) ------------------


def collective_variants(peers: list[str], world: int) -> dict[str, dict[str, Any]]:
    """``{op: {peer label: call}}`` for each peer, built on the process group that already exists."""
    import torch

    x = torch.arange(4, dtype=torch.float32)
    ops: dict[str, dict[str, Any]] = {"all_gather": {}, "all_reduce": {}, "barrier": {}}
    if "fabric" in peers:
        fabric = fabric_class()(accelerator="cpu", strategy="ddp", devices=world)
        fabric.launch()  # processes exist already (LOCAL_RANK set): sets the strategy up, no relaunch
        ops["all_gather"]["Fabric"] = lambda: fabric.all_gather(x)
        ops["all_reduce"]["Fabric"] = lambda: fabric.all_reduce(
            x.clone(), reduce_op="sum"
        )  # in place, as raw
        ops["barrier"]["Fabric"] = lambda: fabric.barrier()
    if "ll18" in peers:
        from _ll18 import Idle

        ll = Idle(accelerator="cpu", strategy="ddp", devices=world)
        ll.run()  # sets the strategy up on the existing group
        ops["all_gather"]["LightningLite 1.8"] = lambda: ll.all_gather(x)
        # LightningLite 1.8 has no public all_reduce: its strategy's reduce (in place: on a clone, as raw)
        ops["all_reduce"]["LightningLite 1.8"] = lambda: ll._strategy.reduce(x.clone(), reduce_op="sum")
        ops["barrier"]["LightningLite 1.8"] = lambda: ll.barrier()
    if "accelerate" in peers:
        from accelerate import Accelerator

        acc = Accelerator(cpu=True)
        ops["all_gather"]["Accelerate"] = lambda: acc.gather(x)
        ops["all_reduce"]["Accelerate"] = lambda: acc.reduce(x, reduction="sum")
        ops["barrier"]["Accelerate"] = lambda: acc.wait_for_everyone()
    return ops
