"""Collectives: lite_collectives against raw torch.distributed, 2 gloo processes on 127.0.0.1.

    python bench/bench_collectives.py [--rounds 15] [--calls 100] [--json out.json]

Both processes run every variant in turn, call by call (raw, lite, ..., raw, lite, ...; each round
starts with the next variant), ``--calls`` calls per variant per round, and the figure is the
median over rounds of the mean time per call on rank 0. Small tensors (4 floats), where the
per-call overhead shows most. Variants:

- raw: ``dist.all_gather_single`` (``all_gather_into_tensor`` before torch 2.13), ``dist.all_reduce``
  on a clone (lite does not mutate its input), ``dist.barrier``;
- lite: ``lite_collectives.all_gather`` / ``all_reduce`` / ``barrier`` on the default group,
  watched by the divergence watchdog (``all_gather`` checks shapes: its 4 floats ride inside the
  fixed 256-byte header that carries the check, so it is one collective too);
- lite, same_shapes=True: ``all_gather`` told the shapes match (no check, raw torch's gather);
- lite, unwatched: the same calls on the same group with the watchdog switched off for the call
  (through a private hook): the difference to "lite" is the watchdog's fast-path cost (a
  sub-group, which the watchdog does not watch, measured 1.6-2.2x raw here: another gloo group's
  cost, not lite's);
- with ``--peers``: Lightning Fabric's, LightningLite 1.8's and Accelerate's calls (those installed;
  see _peers.py) on the same process group, all_reduce on a clone as raw;
- with ``--header-sizes``: raw torch's gather of 16 bytes against 256 bytes and 1 KiB (what sized
  all_gather's header: a 1 KiB one measured 1.1-1.35x the 16-byte gather here, 256 bytes ~1.0x).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _peers import collective_variants
from _peers import parse as parse_peers

import lite_collectives as lc
from lite_collectives import _collectives as _lite_calls

TARGETS = {"all_gather": 1.2, "all_reduce": 1.1, "barrier": 1.05}
_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _payloads(world: int) -> dict[str, Any]:
    """Raw torch's gather of 16 bytes (as "raw"), 256 bytes and 1 KiB, each on buffers it reuses."""
    variants = {}
    for name, nbytes in (("raw", 16), ("256 bytes", 256), ("1 KiB", 1024)):
        mine, everyone = (
            torch.zeros(nbytes, dtype=torch.uint8),
            torch.zeros(world * nbytes, dtype=torch.uint8),
        )
        variants[name] = lambda mine=mine, everyone=everyone: _GATHER(everyone, mine)
    return variants


def _variants(world: int, header_sizes: bool = False) -> dict[str, dict[str, Any]]:
    x = torch.arange(4, dtype=torch.float32)
    out = torch.empty(world * 4)

    def raw_gather() -> Any:
        _GATHER(out, x)
        return out.view(world, 4)

    def raw_reduce() -> Any:
        y = x.clone()
        dist.all_reduce(y)
        return y

    def unwatched(call: Any) -> Any:
        # The same call on the same group with the watchdog's lookup switched off for its
        # duration (a private hook, for measuring only): what lite costs without the watchdog.
        watched = _lite_calls.watch_for

        def run() -> Any:
            _lite_calls.watch_for = _no_watch
            try:
                return call()
            finally:
                _lite_calls.watch_for = watched

        return run

    variants = {
        "all_gather": {
            "raw": raw_gather,
            "lite": lambda: lc.all_gather(x),
            "lite, same_shapes=True": lambda: lc.all_gather(x, same_shapes=True),
            "lite, unwatched": unwatched(lambda: lc.all_gather(x)),
        },
        "all_reduce": {
            "raw": raw_reduce,
            "lite": lambda: lc.all_reduce(x),
            "lite, unwatched": unwatched(lambda: lc.all_reduce(x)),
        },
        "barrier": {
            "raw": lambda: dist.barrier(),
            "lite": lambda: lc.barrier(),
            "lite, unwatched": unwatched(lambda: lc.barrier()),
        },
    }
    if header_sizes:
        variants["gather of n bytes"] = _payloads(world)
    return variants


def _no_watch(group: Any) -> None:
    return None


def _rank(
    rank: int,
    world: int,
    port: int,
    rounds: int,
    calls: int,
    queue: Any,
    peers: list[str] = (),  # type: ignore[assignment]
    header_sizes: bool = False,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    lc.init_process_group(timeout=120)
    results: dict[str, dict[str, float]] = {}
    ops = _variants(world, header_sizes)
    for op, extra in collective_variants(list(peers), world).items():  # peers (bench/_peers.py), if any
        ops[op].update(extra)
    for op, variants in ops.items():
        names = list(variants)
        for fn in variants.values():  # warm up
            for _ in range(20):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in names}
        clock = time.perf_counter
        for r in range(rounds):
            # Variants take turns call by call (the order rotating each round), so a change in
            # the machine's load during a round weighs on every variant alike.
            order = [variants[name] for name in names[r % len(names) :] + names[: r % len(names)]]
            spent = [0.0] * len(order)
            dist.barrier()  # both ranks start the round together
            for _ in range(calls):
                for i, fn in enumerate(order):
                    start = clock()
                    fn()
                    spent[i] += clock() - start
            for name, total in zip(names[r % len(names) :] + names[: r % len(names)], spent):
                samples[name].append(total / calls * 1e6)
        results[op] = {name: statistics.median(values) for name, values in samples.items()}
    if rank == 0:
        queue.put(results)
    lc.destroy_process_group()


def measure(
    rounds: int,
    calls: int,
    world: int = 2,
    peers: list[str] = (),  # type: ignore[assignment]
    header_sizes: bool = False,
) -> dict[str, dict[str, float]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        ctx.Process(target=_rank, args=(r, world, port, rounds, calls, queue, list(peers), header_sizes))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results = queue.get(timeout=900)
    for p in procs:
        p.join(60)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| collective | variant | µs/call | / raw | target |",
        "|---|---|---:|---:|---|",
    ]
    for op, variants in results.items():
        raw = variants["raw"]
        for name, value in variants.items():
            ratio = value / raw
            target = ""
            if name in ("lite", "lite, same_shapes=True"):
                target = f"{':white_check_mark:' if ratio <= TARGETS[op] else ':x:'} ≤ {TARGETS[op]}"
            lines.append(f"| {op} | {name} | {value:.1f} | {ratio:.3f} | {target} |")
    return "\n".join(lines)


def cost_table(results: dict[str, dict[str, float]]) -> str:
    """lite's own time per call: one process (world size 1), where no peer makes anyone wait."""
    lines = [
        "| collective | variant | µs/call | over raw (µs) |",
        "|---|---|---:|---:|",
    ]
    for op, variants in results.items():
        raw = variants["raw"]
        for name, value in variants.items():
            over = "" if name == "raw" else f"{value - raw:+.1f}"
            lines.append(f"| {op} | {name} | {value:.1f} | {over} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument(
        "--peers", default="none", help="fabric,ll18,accelerate; 'all' (those installed); 'none'"
    )
    parser.add_argument(
        "--world",
        type=int,
        default=2,
        help="processes; 1 measures lite's own time per call (gloo, nothing to wait for, only code)",
    )
    parser.add_argument(
        "--header-sizes", action="store_true", help="also time raw gathers of 16 B, 256 B and 1 KiB"
    )
    args = parser.parse_args()
    if args.world == 1:
        results = measure(args.rounds, args.calls, world=1)
        print(cost_table(results))
    else:
        results = measure(
            args.rounds,
            args.calls,
            world=args.world,
            peers=parse_peers(args.peers),
            header_sizes=args.header_sizes,
        )
        print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
