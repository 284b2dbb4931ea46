"""Kill a run with SIGKILL at a random step, resume it from its last checkpoint: bit for bit the same result.

The state holds the model, the optimizer, an LR scheduler, the set-up loader (shuffled) and every
rank's RNG states (the model has dropout); each run is a real program started as a user would.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROGRAM = Path(__file__).with_name("resume_program.py")
TIMEOUT = 240


def _run(strategy: str, devices: int, checkpoint: Path, out: Path, kill_after: int | None = None) -> int:
    args = [sys.executable, str(PROGRAM), strategy, str(devices), str(checkpoint), str(out)]
    if kill_after is not None:
        args += ["--kill-after", str(kill_after)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, cwd=checkpoint.parent)
    if kill_after is None:
        assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.returncode


@pytest.mark.parametrize(
    ("strategy", "devices"),
    [("single_device", 1), ("ddp_spawn", 2), ("ddp", 2)],
    ids=["one", "spawn", "script"],
)
def test_a_killed_run_resumes_bit_for_bit(tmp_path: Path, strategy: str, devices: int) -> None:
    steps = 2 * 48 // (4 * devices)  # EPOCHS * SAMPLES / (BATCH * devices)
    kill_after = random.Random().randint(1, steps - 1)  # any step, the last one of an epoch too
    straight = tmp_path / "straight"
    straight.mkdir()
    _run(strategy, devices, straight / "ckpt.pt", straight / "out.pt")

    broken = tmp_path / "broken"
    broken.mkdir()
    code = _run(strategy, devices, broken / "ckpt.pt", broken / "out.pt", kill_after=kill_after)
    assert code != 0 and not (broken / "out.pt").exists(), f"the run was not killed at step {kill_after}"
    _run(strategy, devices, broken / "ckpt.pt", broken / "out.pt")

    expected = torch.load(straight / "out.pt", weights_only=True)
    actual = torch.load(broken / "out.pt", weights_only=True)
    assert actual["steps"] == expected["steps"] == steps
    for a, b in zip(actual["params"], expected["params"]):
        assert torch.equal(a, b), f"parameters differ after a kill at step {kill_after}"
    for key, value in expected["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(actual["optimizer"]["state"][key][name], tensor), (kill_after, key, name)
    assert actual["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
