"""Checkpoint save and load of a ~100 MB model + optimizer state: LightningLite against torch.save/torch.load.

    python bench/bench_checkpoint.py [--rounds 7] [--dir DIR] [--json out.json]

The state is a 12.6M-parameter MLP (50 MB of float32) and its SGD-with-momentum state (another
50 MB). ``LightningLite.save`` writes atomically (temporary file in the same directory, then
``os.replace``), against plain ``torch.save``; lite with ``TorchCheckpointIO(fsync=True)`` (a disk
flush before the rename) is compared with ``torch.save`` followed by an fsync. Each round runs every variant once, in
turn; medians are reported. The files go to ``--dir`` (default: a temporary directory). With
``--peers``, Lightning Fabric's ``save``/``load``, LightningLite 1.8's and Accelerate's ``save`` and
``save_state``/``load_state`` (a directory) join the rounds (see _peers.py).
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
from _peers import parse as parse_peers
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


def peer_calls(
    peers: list[str], model: nn.Module, opt: torch.optim.Optimizer, path: Path, directory: Path
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """Each peer's own save and load of the same state (bench/_peers.py): ``(saves, loads)``."""
    saves: dict[str, Callable[[], Any]] = {}
    loads: dict[str, Callable[[], Any]] = {}
    if "fabric" in peers:
        from _peers import fabric_class

        fabric = fabric_class()(accelerator="cpu", devices=1)
        saves["fabric.save"] = lambda: fabric.save(path, {"model": model, "optimizer": opt})
        loads["fabric.load"] = lambda: fabric.load(path)
    if "ll18" in peers:
        from _ll18 import Idle

        ll = Idle(accelerator="cpu", devices=1)
        # LightningLite 1.8 pickles what it is given: its users pass state_dicts
        saves["ll18.save"] = lambda: ll.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict()}, path
        )
        loads["ll18.load"] = lambda: ll.load(path)
    if "accelerate" in peers:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        acc = Accelerator(cpu=True)
        acc.prepare(model, opt)  # registers them for save_state/load_state
        state_dir = directory / "accelerate_state"
        saves["accelerate.save"] = lambda: acc.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict()}, path, safe_serialization=False
        )
        # Accelerate has no one-file load: its checkpoint API is save_state/load_state on a directory
        saves["accelerate.save_state"] = lambda: acc.save_state(str(state_dir), safe_serialization=False)
        loads["accelerate.load_state"] = lambda: acc.load_state(str(state_dir))
    return saves, loads


def bench(rounds: int, directory: Path, peers: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
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
    peer_saves, peer_loads = peer_calls(list(peers), model, opt, path, directory)
    saves.update(peer_saves)
    loads.update(peer_loads)
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
    parser.add_argument(
        "--peers", default="none", help="fabric,ll18,accelerate; 'all' (those installed); 'none'"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = bench(args.rounds, Path(tmp), parse_peers(args.peers))
    med = result["median_s"]
    print(f"checkpoint: {result['size_mb']:.0f} MB\n| operation | median (s) |\n|---|---:|")
    for name, value in med.items():
        print(f"| {name} | {value:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
