"""Per-step overhead of LightningLite against the same loop in raw PyTorch (and peers, if installed).

    python bench/bench_step.py [--device cpu|cuda] [--steps 300] [--rounds 7] [--peers all] [--json out.json]
    python bench/bench_step.py --memory tiny,32-true,lite      # one runner alone: its peak RSS
    python bench/bench_step.py --ddp spawn --rounds 3           # 2 processes: torch DDP vs lite ddp_spawn

One process: each round times every runner once, in turn (A B A B ...), over the same model size,
data and optimizer; the table reports the median step time of each runner and its ratio to raw
PyTorch. Two processes: each round launches a raw torch DDP pair (``torch.multiprocessing`` with
the same start method) and then a LightningLite ``ddp_<method>`` pair; each pair times its own
steps (median of chunks), and the lite pair also times a raw DDP loop in its own processes, so
the same-process ratio has no launch-to-launch noise. ``--peers`` adds Lightning Fabric,
LightningLite 1.8 and Accelerate (those installed; see _peers.py) to both, each with its own launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _peers import parse as parse_peers
from torch import nn

# in, hidden, out, batch. The medium model stays small enough for bf16, which this kind of CPU
# (no AVX512-BF16/AMX) emulates at a fraction of float32's speed.
SIZES = {"tiny": (32, 32, 1, 32), "medium": (256, 1024, 256, 64)}
PRECISIONS = ("32-true", "bf16-mixed")


def make(
    size: str, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    d_in, hidden, d_out, batch = SIZES[size]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    x, y = torch.randn(batch, d_in, device=device), torch.randn(batch, d_out, device=device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), x, y


def raw_steps(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, precision: str
) -> Callable[[int], None]:
    """The plain PyTorch loop; what lite's set-up objects do, written by hand."""
    bf16 = precision == "bf16-mixed"
    device_type = x.device.type

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            if bf16:
                with torch.autocast(device_type, dtype=torch.bfloat16):
                    out = model(x)
                out = out.float()
            else:
                out = model(x)
            nn.functional.mse_loss(out, y).backward()
            opt.step()

    return steps


def raw_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    model, opt, x, y = make(size, device)
    return raw_steps(model.to(device), opt, x, y, precision)


def lite_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from lite_facade import LightningLite

    class Bench(LightningLite):
        def run(self) -> Callable[[int], None]:
            model, opt, x, y = make(size, device)
            model, opt = self.setup(model, opt)

            def steps(n: int) -> None:
                for _ in range(n):
                    opt.zero_grad()
                    self.backward(nn.functional.mse_loss(model(x), y))
                    opt.step()

            return steps

    return Bench(accelerator=device.type, devices=1, precision=precision).run()


def _peer_loop(
    model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor, backward: Any
) -> Callable[[int], None]:
    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            backward(nn.functional.mse_loss(model(x), y))
            opt.step()

    return steps


def fabric_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from _peers import fabric_class

    fabric = fabric_class()(accelerator=device.type, devices=1, precision=precision)
    model, opt, x, y = make(size, device)
    model, opt = fabric.setup(model, opt)
    return _peer_loop(model, opt, x, y, fabric.backward)


def ll18_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from _peers import ll18_precision
    from lightning_lite import LightningLite

    class Bench(LightningLite):
        def run(self) -> Callable[[int], None]:
            model, opt, x, y = make(size, device)
            model, opt = self.setup(model, opt)
            return _peer_loop(model, opt, x, y, self.backward)

    return Bench(accelerator=device.type, devices=1, precision=ll18_precision(precision)).run()


def accelerate_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one state per process: this runner's precision replaces the last one's
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if precision == "bf16-mixed" else "no")
    model, opt, x, y = make(size, device)
    model, opt = acc.prepare(model, opt)
    return _peer_loop(model, opt, x, y, acc.backward)


RUNNERS = {"torch": raw_runner, "lite": lite_runner}
PEER_RUNNERS = {"fabric": fabric_runner, "ll18": ll18_runner, "accelerate": accelerate_runner}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    runners: dict[str, Callable[[int], None]], device: torch.device, steps: int, rounds: int
) -> dict[str, float]:
    for run in runners.values():  # warm-up
        run(max(10, steps // 10))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            sync(device)
            start = time.perf_counter()
            run(steps)
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def steps_for(size: str, steps: int) -> int:
    return steps if size == "tiny" else max(5, steps // 30)


# -- one runner alone, for its peak memory ------------------------------------------------------------


def peak_memory(spec: str, steps: int) -> dict[str, Any]:
    """Run one runner alone in this (fresh) process; report its peak RSS (``ru_maxrss``, whole process)."""
    size, precision, runner = spec.split(",")
    run = {**RUNNERS, **PEER_RUNNERS}[runner](size, torch.device("cpu"), precision)
    run(steps_for(size, steps))
    return {
        "size": size,
        "precision": precision,
        "runner": runner,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# -- two processes ------------------------------------------------------------------------------------


def chunked(steps: Callable[[int], None], n: int, chunks: int) -> float:
    steps(max(10, n // 5))  # warm-up (and DDP's first-iteration bucket rebuild)
    times = []
    for _ in range(chunks):
        start = time.perf_counter()
        steps(n)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def _torch_ddp_worker(rank: int, port: int, size: str, n: int, chunks: int, out: Any) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # as torchrun's OMP_NUM_THREADS=1: two processes on two cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, opt, x, y = make(size, torch.device("cpu"))
    median = chunked(raw_steps(DistributedDataParallel(model), opt, x, y, "32-true"), n, chunks)
    if rank == 0:
        out.put(median)
    dist.barrier()
    dist.destroy_process_group()


def torch_ddp_pair(start_method: str, size: str, n: int, chunks: int) -> float:
    """Median step time of rank 0 in a raw torch DDP pair started with ``start_method``."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context(start_method)
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_torch_ddp_worker, args=(r, port, size, n, chunks, out)) for r in range(2)]
    for p in procs:
        p.start()
    result = out.get()
    for p in procs:
        p.join(120)
    return float(result)


def lite_ddp_pair(start_method: str, size: str, n: int, chunks: int) -> dict[str, float]:
    """Median step times of rank 0 in a LightningLite ``ddp_<start_method>`` pair, and of raw DDP in it."""
    from _lite_ddp import DDPBench

    return DDPBench(accelerator="cpu", strategy=f"ddp_{start_method}", devices=2).run(size, n, chunks)


def peer_ddp_pair(peer: str, start_method: str, size: str, n: int, chunks: int) -> dict[str, float] | None:
    """A peer's pair with its own in-process launcher; None where it has none for ``start_method``."""
    import _peers

    if peer == "fabric":
        return _peers.fabric_ddp_pair(start_method, size, n, chunks)
    if peer == "ll18":
        return _peers.ll18_ddp_pair(start_method, size, n, chunks)
    if peer == "accelerate" and start_method == "fork":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return _peers.accelerate_ddp_pair(start_method, size, n, chunks, port)
    return None


def ddp(start_method: str, size: str, rounds: int, steps: int, peers: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    n, chunks = steps_for(size, steps) // 2, 6
    torch_times, lite_times, same = [], [], []
    peer_times: dict[str, list[float]] = {}
    peer_same: dict[str, list[float]] = {}
    errors: list[str] = []
    for _ in range(rounds):  # A B C ...: one torch pair, one lite pair, one pair of each peer
        torch_times.append(torch_ddp_pair(start_method, size, n, chunks))
        result = lite_ddp_pair(start_method, size, n, chunks)
        lite_times.append(result["lite"])
        same.append(result["torch_same_process"])
        for peer in peers:
            try:
                got = peer_ddp_pair(peer, start_method, size, n, chunks)
            except Exception as err:  # a peer's failed launch leaves a gap, not a failed run
                print(f"{peer} ddp_{start_method} pair failed: {err!r}", flush=True)
                errors.append(f"{peer}: {err!r}")
                continue
            if got is not None:
                peer_times.setdefault(peer, []).append(got["peer"])
                peer_same.setdefault(peer, []).append(got["torch_same_process"])
    t, lt, s = (statistics.median(v) for v in (torch_times, lite_times, same))
    return {
        "start_method": start_method,
        "size": size,
        "torch": t,
        "lite": lt,
        "torch_same_process": s,
        "peers": {
            peer: {"time": statistics.median(v), "torch_same_process": statistics.median(peer_same[peer])}
            for peer, v in peer_times.items()
        },
        "peer_errors": errors,
    }


# -- command line -------------------------------------------------------------------------------------


def one_process(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows = []
    for size in args.sizes.split(","):
        for precision in PRECISIONS:
            runners = {name: factory(size, device, precision) for name, factory in RUNNERS.items()}
            for name in args.peers:
                runners[name] = PEER_RUNNERS[name](size, device, precision)
            medians = measure(runners, device, steps_for(size, args.steps), args.rounds)
            rows.append({"size": size, "precision": precision, **medians})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument(
        "--peers",
        default="none",
        help="also time these peers: a list of fabric,ll18,accelerate; 'all' (those installed); 'none'",
    )
    parser.add_argument(
        "--memory", metavar="SIZE,PRECISION,RUNNER", help="run one runner alone; report its peak RSS"
    )
    parser.add_argument(
        "--ddp", choices=("spawn", "fork"), help="2 processes: torch DDP pairs vs lite ddp_<method>"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in one process (1: steady on a shared machine)",
    )
    args = parser.parse_args()
    args.peers = parse_peers(args.peers)
    torch.set_num_threads(args.threads)

    if args.memory:
        result: Any = peak_memory(args.memory, args.steps)
        print(result)
    elif args.ddp:
        result = [ddp(args.ddp, size, args.rounds, args.steps, args.peers) for size in args.sizes.split(",")]
        print(
            "| model | start method | torch DDP pair (us) | lite pair (us) | raw DDP inside lite's pair (us) | lite / torch |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for r in result:
            print(
                f"| {r['size']} | {r['start_method']} | {r['torch'] * 1e6:.1f} | {r['lite'] * 1e6:.1f} | "
                f"{r['torch_same_process'] * 1e6:.1f} | {r['lite'] / r['torch']:.3f} |"
            )
    else:
        device = torch.device(args.device)
        print(
            f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, device {device}, "
            f"{torch.get_num_threads()} thread(s)"
            + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
        )
        result = one_process(args)
        print("| model | precision | runner | median step (us) | ratio to torch |")
        print("|---|---|---|---|---|")
        for row in result:
            for name in [k for k in row if k not in ("size", "precision")]:
                print(
                    f"| {row['size']} | {row['precision']} | {name} | {row[name] * 1e6:.1f} | "
                    f"{row[name] / row['torch']:.3f} |"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
