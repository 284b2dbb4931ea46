"""Per-step overhead of LightningLite against the same loop in raw PyTorch (and peers, if installed).

    python bench/bench_step.py [--device cpu|cuda] [--steps 300] [--rounds 7] [--peers]

Each round times every runner once, in turn (A B A B ...), over the same model size, data and
optimizer; the table reports the median step time of each runner and its ratio to raw PyTorch.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

SIZES = {"tiny": (32, 32, 1, 32), "medium": (1024, 4096, 1024, 256)}  # in, hidden, out, batch


def make(
    size: str, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    d_in, hidden, d_out, batch = SIZES[size]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    x, y = torch.randn(batch, d_in, device=device), torch.randn(batch, d_out, device=device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), x, y


def raw_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    model, opt, x, y = make(size, device)
    model.to(device)
    bf16 = precision == "bf16-mixed"

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            if bf16:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = model(x)
                out = out.float()
            else:
                out = model(x)
            nn.functional.mse_loss(out, y).backward()
            opt.step()

    return steps


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


def fabric_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from lightning.fabric import Fabric

    fabric = Fabric(
        accelerator=device.type, devices=1, precision="bf16-mixed" if precision == "bf16-mixed" else "32-true"
    )
    model, opt, x, y = make(size, device)
    model, opt = fabric.setup(model, opt)

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(x), y))
            opt.step()

    return steps


def accelerate_runner(size: str, device: torch.device, precision: str) -> Callable[[int], None]:
    from accelerate import Accelerator

    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if precision == "bf16-mixed" else "no")
    model, opt, x, y = make(size, device)
    model, opt = acc.prepare(model, opt)

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            acc.backward(nn.functional.mse_loss(model(x), y))
            opt.step()

    return steps


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument(
        "--peers", action="store_true", help="also time Lightning Fabric and Accelerate if installed"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
    )
    print("| model | precision | runner | median step (us) | ratio to torch |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        steps = args.steps if size == "tiny" else max(20, args.steps // 10)
        for precision in ("32-true", "bf16-mixed"):
            runners = {
                "torch": raw_runner(size, device, precision),
                "lite": lite_runner(size, device, precision),
            }
            if args.peers:
                for name, factory in (("fabric", fabric_runner), ("accelerate", accelerate_runner)):
                    try:
                        runners[name] = factory(size, device, precision)
                    except ImportError:
                        pass
            medians = measure(runners, device, steps, args.rounds)
            for name, value in medians.items():
                print(
                    f"| {size} | {precision} | {name} | {value * 1e6:.1f} | {value / medians['torch']:.3f} |"
                )


if __name__ == "__main__":
    main()
