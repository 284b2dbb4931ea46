"""Checkpoint save and load of a ~100 MB model + optimizer state: LightningLite against torch.save/torch.load.

    python bench/bench_checkpoint.py [--rounds 7] [--dir DIR] [--json out.json]

The state is a 12.6M-parameter MLP (50 MB of float32) and its SGD-with-momentum state (another
50 MB). ``LightningLite.save`` writes atomically (temporary file in the same directory, then
``os.replace``), against plain ``torch.save``; lite with ``TorchCheckpointIO(fsync=True)`` (a disk
flush before the rename) is compared with ``torch.save`` followed by an fsync. Each round runs every variant once, in
turn; medians are reported. The files go to ``--dir`` (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite_facade import LightningLite
from lite_strategies import TorchCheckpointIO


class _Lite(LightningLite):
    def run(self) -> None:
        pass


def state() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])  # 12.6M parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()  # creates the momentum buffers
    return model, opt


def torch_save_fsync(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def bench(rounds: int, directory: Path) -> dict[str, Any]:
    model, opt = state()
    lite, lite_fsync = (
        _Lite(accelerator="cpu"),
        _Lite(accelerator="cpu", plugins=[TorchCheckpointIO(fsync=True)]),
    )
    content = {"model": model, "optimizer": opt}
    plain = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    path = directory / "bench.ckpt"
    saves: dict[str, Callable[[], None]] = {
        "torch.save": lambda: torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path),
        "lite.save": lambda: lite.save(content, path),
        "torch.save + fsync": lambda: torch_save_fsync(
            {"model": model.state_dict(), "optimizer": opt.state_dict()}, path
        ),
        "lite.save (fsync=True)": lambda: lite_fsync.save(content, path),
    }
    loads: dict[str, Callable[[], Any]] = {
        "torch.load": lambda: torch.load(path, weights_only=True),
        "lite.load": lambda: lite.load(path),
    }
    torch.save(plain, path)
    size_mb = path.stat().st_size / 2**20
    times: dict[str, list[float]] = {name: [] for name in [*saves, *loads]}
    for fn in [*saves.values(), *loads.values()]:  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in [*saves.items(), *loads.items()]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    path.unlink()
    return {"size_mb": size_mb, "median_s": {name: statistics.median(v) for name, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = bench(args.rounds, Path(tmp))
    med = result["median_s"]
    print(f"checkpoint: {result['size_mb']:.0f} MB\n| operation | median (s) |\n|---|---:|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
