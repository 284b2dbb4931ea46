"""Run every benchmark and write ``bench/RESULTS.md``: lite's overhead against raw PyTorch.

    python bench/run_all.py [--quick] [--out bench/RESULTS.md]

Each benchmark runs in its own process (``bench_step.py``, ``bench_launch.py``,
``bench_checkpoint.py``); the peak memory of each step runner is measured in a fresh process
of its own. ``--quick`` uses fewer rounds (for trying the scripts, not for numbers to quote).
The targets are those of a 2-core CPU machine; the table says which ones this run met.
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
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
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


def verdict(value: float, target: float) -> str:
    return f"{value:.3f} {'✅' if value <= target else '❌'} (≤ {target})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    q = args.quick
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)

    steps = run_json("bench_step.py", "--rounds", "3" if q else "9", "--steps", "100" if q else "300")
    memory = {}
    for row in steps:
        for runner in ("torch", "lite"):
            spec = f"{row['size']},{row['precision']},{runner}"
            memory[spec] = run_json("bench_step.py", "--memory", spec, "--steps", "100" if q else "300")[
                "max_rss_kb"
            ]
    ddp = [
        run_json("bench_step.py", "--ddp", method, "--sizes", "tiny", "--rounds", "1" if q else "3")[0]
        for method in ("spawn", "fork")
    ]
    launch = run_json(
        "bench_launch.py", "--repeats", "2" if q else "9", "--launch-repeats", "1" if q else "3"
    )
    ckpt = run_json("bench_checkpoint.py", "--rounds", "2" if q else "7")
    collectives = run_json("bench_collectives.py", "--rounds", "3" if q else "21")
    load_after = os.getloadavg()

    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run_all.py`{' --quick' if q else ''} on {started:%Y-%m-%d %H:%M} UTC.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu_model()}, {os.cpu_count()} cores |",
        f"| torch | {torch.__version__} |",
        f"| Python | {platform.python_version()} on {platform.system()} |",
        f"| load average (1/5/15 min) before | {' / '.join(f'{v:.2f}' for v in load_before)} |",
        f"| load average (1/5/15 min) after | {' / '.join(f'{v:.2f}' for v in load_after)} |",
        "",
        "Ratios are lite / raw PyTorch (lower is better, 1.0 is no overhead); ✅ meets the target, ❌ misses it.",
        "",
        "## Per-step overhead, one process",
        "",
        "Models: tiny is 32 -> 32 -> 1 (batch 32), medium 256 -> 1024 -> 256 (batch 64); SGD; the same data",
        "every step; one torch thread. The runners are timed in turn (A B A B), median of the rounds. Peak memory is the",
        "whole-process `ru_maxrss` of each runner run alone in a fresh process (torch's own import included).",
        "",
        "| model | precision | torch (µs/step) | lite (µs/step) | lite / torch | torch peak RSS (MB) | lite peak RSS (MB) | memory lite / torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in steps:
        size, prec = row["size"], row["precision"]
        m_torch, m_lite = memory[f"{size},{prec},torch"], memory[f"{size},{prec},lite"]
        lines.append(
            f"| {size} | {prec} | {row['torch'] * 1e6:.1f} | {row['lite'] * 1e6:.1f} | "
            f"{verdict(row['lite'] / row['torch'], TARGETS[(size, prec)])} | {m_torch / 1024:.0f} | "
            f"{m_lite / 1024:.0f} | {verdict(m_lite / m_torch, 1.02)} |"
        )
    lines += [
        "",
        "## Per-step overhead, two processes (DDP on the CPU, gloo)",
        "",
        "Each round launches a raw torch DDP pair (`torch.multiprocessing`, same start method) and then a",
        "LightningLite pair; each times rank 0's steps (tiny model, 32-true, one thread per process, median",
        "of chunks). Inside the lite pair a raw DDP loop is also timed in alternation with lite's, in the",
        "same processes: that ratio is free of launch-to-launch noise.",
        "",
        "| lite strategy | torch pair (µs/step) | lite pair (µs/step) | lite / torch pair | raw DDP in lite's processes (µs/step) | lite / raw, same processes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ddp:
        lines.append(
            f"| ddp_{r['start_method']} | {r['torch'] * 1e6:.1f} | {r['lite'] * 1e6:.1f} | "
            f"{verdict(r['lite'] / r['torch'], 1.02)} | {r['torch_same_process'] * 1e6:.1f} | "
            f"{verdict(r['lite'] / r['torch_same_process'], 1.02)} |"
        )
    imports = launch["imports"]
    lines += [
        "",
        "## Start-up",
        "",
        'Whole-process wall time of `python -c "<import>"`, median of interleaved runs, minus `import torch`;',
        "and the time of the import in a fresh process right after `import torch`, timed inside it (median;",
        "far less noisy on a shared machine). The target is ≤ +0.05 s.",
        "",
        "| import | whole process (s) | over `import torch` (s) | after `import torch`, in-process (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in imports.items():
        over, after = r["over_torch_s"], r["after_torch_s"]
        if name == "lite_facade":
            over_text = f"{over:+.3f} {'✅' if over <= 0.05 else '❌'}"
            after_text = f"{after:.3f} {'✅' if after <= 0.05 else '❌'}"
        else:
            over_text, after_text = f"{over:+.3f}", f"{after:.3f}"
        lines.append(f"| `{name}` | {r['median_s']:.3f} | {over_text} | {after_text} |")
    lines += [
        "",
        "Launch to the end of rank 0's first training step, 2 CPU processes (median; `OMP_NUM_THREADS=1`):",
        "",
        "| lite strategy | lite (s) | plain torch script | torch (s) | lite / torch |",
        "|---|---:|---|---:|---:|",
    ]
    for name, r in launch["launch"].items():
        lines.append(
            f"| {name} | {r['lite_s']:.2f} | {r['baseline']} | {r['baseline_s']:.2f} | {r['lite_s'] / r['baseline_s']:.2f} |"
        )
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
        "",
    ]
    sys.path.insert(0, str(HERE))
    from bench_collectives import __doc__ as collectives_doc
    from bench_collectives import table as collectives_table

    lines += [
        "## Collectives, two gloo processes",
        "",
        collectives_doc.split("\n\n", 2)[2].strip(),
        "",
        collectives_table(collectives),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
