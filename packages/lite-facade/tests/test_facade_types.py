"""The public types: mypy --strict on user scripts catches a misspelt flag and accepts a correct loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="the lite-facade test session installs mypy")

GOOD = textwrap.dedent(
    """
    from typing import Any

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lite_facade import LightningLite


    class Lite(LightningLite):
        def run(self, *args: Any, **kwargs: Any) -> None:
            model = nn.Linear(2, 1)
            model, optimizer = self.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
            sgd: torch.optim.SGD = optimizer  # the optimizer keeps its class
            alone: nn.Linear = self.setup(nn.Linear(2, 2))
            data = TensorDataset(torch.ones(4, 2))
            loader = self.setup_dataloaders(DataLoader(data))
            train, test = self.setup_dataloaders(DataLoader(data), DataLoader(data), even=False)
            for batch in loader:
                pass
            gathered: torch.Tensor = self.all_gather(torch.ones(1))
            state: dict[str, Any] = self.load("c.pt")
            print(sgd, alone, train, test, gathered, state)


    Lite(accelerator="cpu", strategy="ddp", devices=2, precision="bf16-mixed")
    Lite(precision=16)
    """
)


def mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(code)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


def test_mypy_strict_catches_bf17_and_accepts_a_correct_script(tmp_path: Path) -> None:
    bad = GOOD + 'Lite(precision="bf17")\nLite(accelerator="gpuu")\n'
    proc = mypy(tmp_path, bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, proc.stdout  # only the two misspelt flags
    assert '"precision"' in errors[0] and "'bf17'" in errors[0]
    assert '"accelerator"' in errors[1] and "'gpuu'" in errors[1]
