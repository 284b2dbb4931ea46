"""Draw bench/results.json (written by run_all.py) as the SVG figures of docs/img/.

    python bench/run_all.py && python bench/plots.py [--results bench/results.json] [--out docs/img]

Needs matplotlib, which lite does not depend on: install it with the peers into the benchmark's own
environment (``pip install -c <(echo torch==2.13.0) -r bench/requirements.txt``). Writes
``step_overhead.svg`` (per-step time over raw torch in %, by model and precision, one and two processes),
``import_time.svg`` (import time after ``import torch``) and ``checkpoint.svg`` (save and load).
Peers missing from the run are missing from the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
ROOT = HERE.parent
FRAMEWORKS = {  # key in results.json: (label, colour)
    "torch": ("raw torch", "#9e9e9e"),
    "lite": ("lite", "#1f77b4"),
    "fabric": ("Lightning Fabric", "#8c52ff"),
    "ll18": ("LightningLite 1.8", "#d62728"),
    "accelerate": ("Accelerate", "#ff9f1c"),
}
IMPORTS = {
    "lite_facade": "lite",
    "lightning_fabric": "fabric",
    "lightning_lite": "ll18",
    "accelerate": "accelerate",
}

plt.rcParams.update(
    {
        "svg.fonttype": "none",  # text stays text: small files, crisp in the browser
        "svg.hashsalt": "lite-bench",  # the same numbers give the same file
        "font.size": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.grid.axis": "y",
        "grid.alpha": 0.3,
    }
)


def measured(results: dict[str, Any]) -> list[str]:
    """lite, then the peers that this run measured."""
    return ["lite", *(name for name, row in results["peers"].items() if "version" in row)]


def bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], fmt: str = "{:.2f}") -> None:
    """Grouped bars, one colour per framework, each bar labelled with its value (a gap where None)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        label, colour = FRAMEWORKS[name]
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        for x, v in zip(xs, values, strict=True):
            if v is None:  # the peer has no such case (or did not run): say so rather than leave a gap
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color=colour, rotation=90)
        if not shown:
            continue
        rects = ax.bar([x for x, _ in shown], [v for _, v in shown], width * 0.92, label=label, color=colour)
        ax.bar_label(rects, [fmt.format(v) for _, v in shown], fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), groups)


def overhead(value: float, base: float) -> float:
    """Percent over the baseline: 1.05 times as long is +5."""
    return float((value / base - 1) * 100)


def step_overhead(results: dict[str, Any], out: Path) -> None:
    names = measured(results)
    fig, (one, two) = plt.subplots(
        1, 2, figsize=(11, 5.6), gridspec_kw={"width_ratios": [2, 1]}, sharey=True, layout="constrained"
    )
    rows = results["steps"]
    groups = [f"{r['size']}\n{r['precision']}" for r in rows]
    fmt = "{:+.0f}%"
    bars(one, groups, {n: [overhead(r[n], r["torch"]) if n in r else None for r in rows] for n in names}, fmt)
    one.set_title("one process")
    one.set_ylabel("% step time over raw torch (lower is better)")
    ddp = results["ddp"]

    def same_process(row: dict[str, Any], name: str) -> float | None:
        if name == "lite":
            return overhead(row["lite"], row["torch_same_process"])
        got = row.get("peers", {}).get(name)
        return None if got is None else overhead(got["time"], got["torch_same_process"])

    bars(
        two,
        [f"tiny, 32-true\n{r['start_method']}" for r in ddp],
        {n: [same_process(r, n) for r in ddp] for n in names},
        fmt,
    )
    two.set_title("two processes (DDP, gloo),\nover raw DDP")
    for ax in (one, two):
        ax.axhline(0, color="black", linewidth=0.8)
    heights = [bar.get_height() for ax in (one, two) for bar in ax.patches]
    top, bottom = max([*heights, 1.0]), min([*heights, 0.0])
    span = top - bottom
    one.set_ylim(bottom - 0.12 * span, top + 0.25 * span)
    one.legend(loc="upper left", ncols=len(names), fontsize=10, frameon=False)
    fig.suptitle("Per-step time over the same loop in raw PyTorch (0% = no overhead; medians)")
    fig.savefig(out / "step_overhead.svg", metadata={"Date": None})
    plt.close(fig)


def import_time(results: dict[str, Any], out: Path) -> None:
    rows = [(IMPORTS[name], row) for name, row in results["imports"].items() if name in IMPORTS]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6), layout="constrained")
    labels = [FRAMEWORKS[n][0] for n, _ in rows]
    values = [row["after_torch_s"] * 1e3 for _, row in rows]
    rects = ax.barh(labels, values, color=[FRAMEWORKS[n][1] for n, _ in rows])
    ax.bar_label(rects, [f"{v:.0f} ms" for v in values], padding=3, fontsize=9)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    ax.set_xlim(0, max(values) * 1.2)
    ax.set_xlabel("ms, in a fresh process right after `import torch` (median)")
    ax.set_title("Import time over `import torch` (lower is better)")
    fig.savefig(out / "import_time.svg", metadata={"Date": None})
    plt.close(fig)


def checkpoint(results: dict[str, Any], out: Path) -> None:
    med = results["checkpoint"]["median_s"]
    keys = {
        "torch": ("torch.save", "torch.load"),
        "lite": ("lite.save", "lite.load"),
        "fabric": ("fabric.save", "fabric.load"),
        "ll18": ("ll18.save", "ll18.load"),
        "accelerate": ("accelerate.save_state", "accelerate.load_state"),
    }
    names = [n for n in ["torch", *measured(results)] if keys[n][0] in med]
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    bars(ax, ["save", "load"], {n: [med.get(keys[n][0]), med.get(keys[n][1])] for n in names}, "{:.3f}")
    ax.set_ylabel("seconds (median, lower is better)")
    ax.set_ylim(0, max(bar.get_height() for bar in ax.patches) * 1.35)
    ax.set_title(
        f"Checkpoint of {results['checkpoint']['size_mb']:.0f} MB (model + optimizer state)\n"
        "Accelerate: save_state / load_state (a directory)",
        fontsize=11,
    )
    ax.legend(ncols=3, fontsize=9, frameon=False, loc="upper right")
    fig.savefig(out / "checkpoint.svg", metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for draw in (step_overhead, import_time, checkpoint):
        draw(results, out)
    print("wrote", ", ".join(str(p) for p in sorted(out.glob("*.svg"))))


if __name__ == "__main__":
    main()
