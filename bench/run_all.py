"""Run every benchmark; write ``bench/RESULTS.md`` and the raw numbers to ``bench/results.json``.

    python bench/run_all.py [--quick] [--peers all|none|fabric,ll18,accelerate] [--out bench/RESULTS.md]
    python bench/plots.py          # the SVGs of docs/img/ from bench/results.json

lite's overhead against raw PyTorch, and against the peers that are installed (Lightning Fabric 2,
LightningLite 1.8, Accelerate: never dependencies of lite; ``bench/requirements.txt`` installs
them), all in the same run. Each benchmark runs in its own process (``bench_step.py``,
``bench_launch.py``, ``bench_checkpoint.py``, ``bench_collectives.py``); the peak memory of each
step runner is measured in a fresh process of its own. ``--quick`` uses fewer rounds (for trying
the scripts, not for numbers to quote). The targets are those of a 2-core CPU machine; the tables
say which ones this run met.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _peers import LABELS, PEERS, probe  # noqa: E402

TARGETS = {
    ("tiny", "32-true"): 1.02,
    ("tiny", "bf16-mixed"): 1.02,
    ("medium", "32-true"): 1.01,
    ("medium", "bf16-mixed"): 1.01,
}


def run_json(script: str, *args: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=tmp)
        return json.loads(out.read_text())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


YES, NO = ":white_check_mark:", ":x:"  # emoji shortcodes: the docs render them as SVG icons


def verdict(value: float, target: float) -> str:
    return f"{value:.3f} {YES if value <= target else NO} (≤ {target})"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def with_ratio(value: float | None, base: float, scale: float = 1.0, digits: int = 1) -> str:
    """``"412.0 (0.98)"``: a time and its ratio to the baseline; "n/a" where there is none."""
    if value is None:
        return "n/a"
    return f"{value * scale:.{digits}f} ({value / base:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--json-out", default=str(HERE / "results.json"))
    parser.add_argument(
        "--peers",
        default="all",
        help="'all' (those that import, the default), 'none', or a list of " + ",".join(PEERS),
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite --out from --json-out (an earlier run) without measuring",
    )
    args = parser.parse_args()
    if args.render_only:
        Path(args.out).write_text(render(json.loads(Path(args.json_out).read_text())))
        return
    q = args.quick
    wanted = list(PEERS) if args.peers == "all" else [] if args.peers == "none" else args.peers.split(",")
    found = probe(wanted)
    peers = [name for name, row in found.items() if "version" in row]
    peer_arg = ",".join(peers) or "none"
    load_before, uptime_before = os.getloadavg(), uptime()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()

    steps = run_json(
        "bench_step.py", "--rounds", "3" if q else "9", "--steps", "100" if q else "300", "--peers", peer_arg
    )
    memory: dict[str, int] = {}
    for row in steps:
        for runner in ("torch", "lite", *peers):
            spec = f"{row['size']},{row['precision']},{runner}"
            memory[spec] = run_json("bench_step.py", "--memory", spec, "--steps", "100" if q else "300")[
                "max_rss_kb"
            ]
    ddp = [
        run_json(
            "bench_step.py",
            "--ddp",
            method,
            "--sizes",
            "tiny",
            "--rounds",
            "1" if q else "3",
            "--peers",
            peer_arg,
        )[0]
        for method in ("spawn", "fork")
    ]
    launch = run_json(
        "bench_launch.py",
        "--repeats",
        "2" if q else "7",
        "--launch-repeats",
        "1" if q else "3",
        "--peers",
        peer_arg,
    )
    ckpt = run_json("bench_checkpoint.py", "--rounds", "2" if q else "7", "--peers", peer_arg)
    collectives = run_json("bench_collectives.py", "--rounds", "3" if q else "61", "--peers", peer_arg)
    collectives_cost = run_json(
        "bench_collectives.py", "--world", "1", "--rounds", "3" if q else "21", "--calls", "1000"
    )
    load_after, uptime_after = os.getloadavg(), uptime()
    duration = time.perf_counter() - t0

    results = {
        "written": f"{started:%Y-%m-%d %H:%M} UTC",
        "quick": q,
        "duration_s": duration,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "system": platform.system(),
        },
        "load_before": load_before,
        "load_after": load_after,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "peers": found,
        "steps": steps,
        "memory_kb": memory,
        "ddp": ddp,
        "imports": launch["imports"],
        "launch": launch["launch"],
        "checkpoint": ckpt,
        "collectives": collectives,
        "collectives_cost": collectives_cost,
    }
    Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    Path(args.out).write_text(text)
    print(text)


def render(r: dict[str, Any]) -> str:
    """RESULTS.md from the numbers of one run (``results.json``)."""
    found = r["peers"]
    peers = [name for name, row in found.items() if "version" in row]
    labels = [LABELS[p] for p in peers]
    m = r["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run_all.py{' --quick' if r['quick'] else ''}` on {r['written']}, "
        f"in {r['duration_s'] / 60:.0f} minutes; the raw numbers are in `bench/results.json`.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores |",
        f"| torch | {m['torch']} |",
        f"| Python | {m['python']} on {m['system']} |",
        f"| `uptime` before | `{r['uptime_before']}` |",
        f"| `uptime` after | `{r['uptime_after']}` |",
        "",
        "The machine is shared (the load average above is what else was running): read the ratios, which",
        "come from runners timed in turn in the same rounds, rather than the absolute times.",
        "",
        "## The peers",
        "",
        "Timed in the same run, where installed; none of them is a dependency of lite. Install them (and",
        "matplotlib, for `bench/plots.py`) into a separate environment, keeping its torch:",
        "`pip install -c <(echo torch==2.13.0) -r bench/requirements.txt`.",
        "",
        "| peer | version | in this run |",
        "|---|---|---|",
    ]
    for row in found.values():
        if "version" in row:
            lines.append(f"| {row['label']} | {row['version']} | measured |")
        else:
            lines.append(f"| {row['label']} | - | not measured: it does not import (`{row['error']}`) |")
    lines += [
        "",
        "Ratios are to raw PyTorch (lower is better, 1.0 is no overhead); lite's targets: "
        f"{YES} met, {NO} missed.",
        "",
        "## Per-step overhead, one process",
        "",
        "Models: tiny is 32 -> 32 -> 1 (batch 32), medium 256 -> 1024 -> 256 (batch 64); SGD; the same data",
        "every step; one torch thread. The runners are timed in turn (A B C ...), median of the rounds;",
        "each cell is µs/step (ratio to torch). Every framework's own loop: `setup`, then `backward`",
        "(Accelerate: `prepare`, `accelerator.backward`); bf16-mixed is each one's autocast setting.",
        "",
        "| model | precision | torch (µs/step) | lite | lite / torch | " + " | ".join(labels) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(peers),
    ]
    targets = TARGETS
    for row in r["steps"]:
        size, prec, base = row["size"], row["precision"], row["torch"]
        cells = [with_ratio(row.get(p), base, 1e6) for p in peers]
        lines.append(
            f"| {size} | {prec} | {base * 1e6:.1f} | {row['lite'] * 1e6:.1f} | "
            f"{verdict(row['lite'] / base, targets[(size, prec)])} | " + " | ".join(cells) + " |"
        )
    mem = r["memory_kb"]
    lines += [
        "",
        "Peak memory: the whole-process `ru_maxrss` of each runner run alone in a fresh process (torch's",
        "own import included), MB (ratio to torch).",
        "",
        "| model | precision | torch (MB) | lite | memory lite / torch | " + " | ".join(labels) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(peers),
    ]
    for row in r["steps"]:
        size, prec = row["size"], row["precision"]
        base = mem[f"{size},{prec},torch"]
        lite = mem[f"{size},{prec},lite"]
        cells = [with_ratio(mem.get(f"{size},{prec},{p}"), base, 1 / 1024, 0) for p in peers]
        lines.append(
            f"| {size} | {prec} | {base / 1024:.0f} | {lite / 1024:.0f} | {verdict(lite / base, 1.02)} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## Per-step overhead, two processes (DDP on the CPU, gloo)",
        "",
        "Each round launches a raw torch DDP pair (`torch.multiprocessing`, same start method), then a",
        "LightningLite pair, then a pair of each peer with the peer's own launcher (Fabric and LightningLite",
        "1.8: `ddp_spawn` / `ddp_fork`; Accelerate: `notebook_launcher`, which forks, so no spawn row); each",
        "times rank 0's steps (tiny model, 32-true, one thread per process, median of chunks). Inside each",
        "framework's pair a raw DDP loop is also timed in alternation with the framework's, in the same",
        "processes: that ratio is free of launch-to-launch noise. A peer's cell is µs/step (ratio to the",
        "torch pair) / ratio to raw DDP in the peer's own processes.",
        "",
        "| start method | torch pair (µs/step) | lite: µs (/ torch pair) | lite / raw, same processes | "
        + " | ".join(labels)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(peers),
    ]
    for row in r["ddp"]:
        cells = []
        for p in peers:
            got = row.get("peers", {}).get(p)
            cells.append(
                "n/a"
                if got is None
                else f"{with_ratio(got['time'], row['torch'], 1e6)} / {got['time'] / got['torch_same_process']:.2f}"
            )
        lines.append(
            f"| {row['start_method']} | {row['torch'] * 1e6:.1f} | {with_ratio(row['lite'], row['torch'], 1e6)} | "
            f"{verdict(row['lite'] / row['torch_same_process'], 1.02)} | " + " | ".join(cells) + " |"
        )
    failures = [
        f"`ddp_{row['start_method']}`: {err}" for row in r["ddp"] for err in row.get("peer_errors", [])
    ]
    if failures:
        lines += [
            "",
            "Peer pairs that failed in this run (their medians are over the rounds that did not):",
            "",
            *(f"- {text}" for text in failures),
        ]
    lines += [
        "",
        "## Start-up",
        "",
        'Whole-process wall time of `python -c "<import>"`, median of interleaved runs, minus `import torch`;',
        "and the time of the import in a fresh process right after `import torch`, timed inside it (median;",
        "far less noisy on a shared machine). lite's target is ≤ +0.05 s.",
        "",
        "| import | whole process (s) | over `import torch` (s) | after `import torch`, in-process (s) |",
        "|---|---:|---:|---:|",
    ]
    import_names = {"lightning_fabric": "fabric", "lightning_lite": "ll18", "accelerate": "accelerate"}
    for name, row in r["imports"].items():
        over, after = row["over_torch_s"], row["after_torch_s"]
        if name == "lite_facade":
            over_text = f"{over:+.3f} {YES if over <= 0.05 else NO}"
            after_text = f"{after:.3f} {YES if after <= 0.05 else NO}"
        else:
            over_text, after_text = f"{over:+.3f}", f"{after:.3f}"
        label = f"`{name}`" + (f" ({LABELS[import_names[name]]})" if name in import_names else "")
        lines.append(f"| {label} | {row['median_s']:.3f} | {over_text} | {after_text} |")
    lines += [
        "",
        "Launch to the end of rank 0's first training step, 2 CPU processes (median; `OMP_NUM_THREADS=1`),",
        "s (ratio to the plain torch script). Each peer launches the same way where it can: Fabric and",
        "LightningLite 1.8 with the same strategy names (`ddp` re-runs the script); Accelerate with",
        "`notebook_launcher` (fork) and with `accelerate launch` (next to `lite run`, both torchrun inside).",
        "",
        "| lite strategy | plain torch script | torch (s) | lite | " + " | ".join(labels) + " |",
        "|---|---|---:|---:|" + "---:|" * len(peers),
    ]
    for name, row in r["launch"].items():
        base = row["baseline_s"]
        cells = [with_ratio(row.get("peers", {}).get(p), base, 1, 2) for p in peers]
        lines.append(
            f"| {name} | {row['baseline']} | {base:.2f} | {with_ratio(row['lite_s'], base, 1, 2)} | "
            + " | ".join(cells)
            + " |"
        )
    ckpt = r["checkpoint"]
    med = ckpt["median_s"]
    lines += [
        "",
        f"## Checkpoint ({ckpt['size_mb']:.0f} MB: model + SGD momentum state)",
        "",
        "`LightningLite.save` writes atomically (temporary file, then `os.replace`); with",
        "`TorchCheckpointIO(fsync=True)` it also flushes the file to the disk, compared with `torch.save` + fsync.",
        "",
        "| operation | lite (s) | torch (s) | lite / torch |",
        "|---|---:|---:|---:|",
        f"| save (atomic) vs `torch.save` | {med['lite.save']:.3f} | {med['torch.save']:.3f} | "
        f"{verdict(med['lite.save'] / med['torch.save'], 1.05)} |",
        f"| save (atomic, `fsync=True`) vs `torch.save` + fsync | {med['lite.save (fsync=True)']:.3f} | "
        f"{med['torch.save + fsync']:.3f} | {verdict(med['lite.save (fsync=True)'] / med['torch.save + fsync'], 1.05)} |",
        f"| load vs `torch.load(weights_only=True)` | {med['lite.load']:.3f} | {med['torch.load']:.3f} | "
        f"{verdict(med['lite.load'] / med['torch.load'], 1.05)} |",
    ]
    peer_ops = [
        ("fabric.save", "torch.save", "`fabric.save(path, {model, optimizer})`"),
        ("fabric.load", "torch.load", "`fabric.load(path)`"),
        ("ll18.save", "torch.save", "LightningLite 1.8 `save({state_dicts}, path)`"),
        ("ll18.load", "torch.load", "LightningLite 1.8 `load(path)`"),
        ("accelerate.save", "torch.save", "`accelerator.save({state_dicts}, path)`"),
        ("accelerate.save_state", "torch.save", "`accelerator.save_state(dir)` (also RNG states)"),
        (
            "accelerate.load_state",
            "torch.load",
            "`accelerator.load_state(dir)` (into the model and optimizer)",
        ),
    ]
    rows = [(name, base, text) for name, base, text in peer_ops if name in med]
    if rows:
        lines += [
            "",
            "The peers' own calls on the same state, in the same rounds:",
            "",
            "| peer operation | peer (s) | torch (s) | peer / torch |",
            "|---|---:|---:|---:|",
        ]
        for name, base, text in rows:
            lines.append(f"| {text} | {med[name]:.3f} | {med[base]:.3f} | {med[name] / med[base]:.3f} |")
    from bench_collectives import __doc__ as collectives_doc
    from bench_collectives import cost_table as collectives_cost_table
    from bench_collectives import table as collectives_table

    lines += [
        "",
        "## Collectives, two gloo processes",
        "",
        collectives_doc.split("\n\n", 2)[2].strip(),
        "",
        *([r["collectives_note"], ""] if r.get("collectives_note") else []),
        collectives_table(r["collectives"]),
        "",
    ]
    if r.get("collectives_cost"):
        lines += [
            "lite's own time per call, in one process (`--world 1 --calls 1000`: gloo with nothing to",
            "wait for, so only code is timed):",
            "",
            collectives_cost_table(r["collectives_cost"]),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
