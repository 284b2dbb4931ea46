"""Step time of bf16-mixed relative to 32-true on CPU, through lite_precision.

A step is the facade's module wrapper (convert input, forward under the precision's
context, convert output), the loss, ``precision.backward`` and ``precision.optimizer_step``.
The two modes are timed in alternation (A B A B ...) so that drift of the machine (clock,
other load) falls on both, and the median of the rounds is reported.

    python bench/bench_precision.py [--rounds 15] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch

from lite_precision import Precision, get_precision

SIZES = {
    # name: (batch, input, hidden, layers, output), (rounds, steps per round) as fractions of the CLI's
    "small": (64, 32, 128, 2, 10),
    "medium": (128, 256, 1024, 2, 256),
}
# bf16 matmuls are emulated on CPUs without AVX512-BF16/AMX (10-30x slower than float32):
# the medium model gets fewer rounds and steps so that the whole run stays near a minute.
_WORK = {"small": (1.0, 1.0), "medium": (0.4, 0.1)}


def make_step(precision: Precision, size: str) -> Callable[[], None]:
    batch, n_in, hidden, layers, n_out = SIZES[size]
    torch.manual_seed(0)
    dims = [n_in] + [hidden] * layers
    blocks: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        blocks += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = precision.convert_module(torch.nn.Sequential(*blocks, torch.nn.Linear(hidden, n_out)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, n_in), torch.randn(batch, n_out)

    def step() -> None:
        with precision.forward_context():
            out = model(precision.convert_input(x))
        loss = torch.nn.functional.mse_loss(precision.convert_output(out), y)
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def bench(size: str, rounds: int, steps: int) -> tuple[float, float, float]:
    """Median seconds per step of 32-true and bf16-mixed, and the median of the per-round ratios."""
    a_step = make_step(get_precision("32-true", "cpu"), size)
    b_step = make_step(get_precision("bf16-mixed", "cpu"), size)
    for warm in (a_step, b_step):
        time_steps(warm, 3)
    a_times, b_times = [], []
    for _ in range(rounds):
        a_times.append(time_steps(a_step, steps))
        b_times.append(time_steps(b_step, steps))
    ratios = [b / a for a, b in zip(a_times, b_times)]
    return statistics.median(a_times), statistics.median(b_times), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, --rounds {args.rounds} --steps {args.steps}\n"
    )
    print(
        "| model (batch, in, hidden, layers, out), rounds x steps | 32-true ms/step | bf16-mixed ms/step | bf16-mixed / 32-true (median of rounds) |"
    )
    print("|---|---:|---:|---:|")
    for size in SIZES:
        rounds = max(int(args.rounds * _WORK[size][0]), 3)
        steps = max(int(args.steps * _WORK[size][1]), 2)
        a, b, ratio = bench(size, rounds, steps)
        print(f"| {size} {SIZES[size]}, {rounds}x{steps} | {a * 1e3:.2f} | {b * 1e3:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
