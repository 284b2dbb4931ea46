"""Each example of examples/ runs as a user would run it (a subprocess, bounded) and says what it should."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
CLASSIFIER = EXAMPLES / "image_classifier"


def run_example(args: list[str], cwd: Path, timeout: float = 180) -> str:
    """Run ``python *args`` in ``cwd``; fail with its output if it exits non-zero; return stdout."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{args} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def accuracy(output: str, label: str) -> float:
    found = re.findall(rf"{label}: ([0-9.]+)", output)
    assert len(found) == 1, f"expected one '{label}' line (printed by rank 0 only), got:\n{output}"
    return float(found[0])


@pytest.mark.parametrize(
    "args",
    [
        ["train_torch.py"],
        ["train_lite.py"],
        ["train_lite.py", "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu"],
    ],
    ids=["torch", "lite-1-process", "lite-ddp-2-processes"],
)
def test_image_classifier(args: list[str]) -> None:
    pytest.importorskip("sklearn")  # the example's data; nox installs it after the numpy-free run
    assert accuracy(run_example(args, CLASSIFIER), "test accuracy") >= 0.95


def test_collectives_under_torchrun() -> None:
    out = run_example(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", str(EXAMPLES / "collectives_torchrun.py")],
        EXAMPLES,
    )
    assert "environment: TorchElasticEnvironment, world size 2" in out
    assert "all_reduce sum: 3.0, mean: 1.5" in out
    assert "all_gather: [0, 1]" in out
    assert "all_gather_uneven: [[0], [0, 1]]" in out
    assert "broadcast: {'lr': 0.1, 'chosen_by': 0}" in out
    assert "all_gather_object: ['rank-0', 'rank-1']" in out


def test_data_alone() -> None:
    out = run_example([str(EXAMPLES / "data_alone.py")], EXAMPLES)
    assert "samples per rank: [32, 32]" in out
    assert "ranks disjoint: True, together all 64: True" in out
    assert "rank 0 reshuffled between epochs: True" in out
    assert "learned y = 3.00 x + 0.50" in out
    assert "loader state: epoch 30" in out


@pytest.mark.parametrize(
    "args",
    [[], ["--strategy", "ddp_fork", "--precision", "32-true"]],
    ids=["ddp_spawn-bf16-mixed", "ddp_fork-32"],
)
def test_tiny_trainer(args: list[str]) -> None:
    out = run_example([str(EXAMPLES / "tiny_trainer.py"), *args], EXAMPLES)
    assert "world size 2" in out
    assert accuracy(out, "train accuracy") >= 0.85
