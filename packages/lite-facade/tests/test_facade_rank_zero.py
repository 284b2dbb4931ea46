"""rank_zero_only / rank_zero_warn / rank_zero_info / rank_zero_first, on 2 real gloo processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import lite_facade._rank_zero as rz
from lite_facade import LightningLite, rank_zero_info, rank_zero_only, rank_zero_warn
from lite_testing import run_processes

TIMEOUT = 120


@pytest.fixture(autouse=True)
def _fresh_rank() -> Any:
    rz.set_rank(None)  # an earlier run() in this process set it
    yield
    rz.set_rank(None)


def test_the_rank_comes_from_the_environment_then_from_set_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    @rank_zero_only
    def record(x: int) -> int:
        calls.append(x)
        return x

    monkeypatch.setenv("RANK", "1")
    assert record(1) is None and calls == []
    monkeypatch.setenv("RANK", "0")
    assert record(2) == 2 and calls == [2]
    rz.set_rank(3)
    assert record(3) is None and calls == [2]
    assert record.__name__ == "record"


def test_warn_and_info_only_on_rank_zero(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rz.set_rank(1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rank_zero_warn("not here")
    assert seen == []
    caplog.set_level(logging.INFO, logger="lite")
    rank_zero_info("not here either")
    rz.set_rank(0)
    with pytest.warns(UserWarning, match="here") as record:
        rank_zero_warn("here")
    assert record[0].filename == __file__  # points at the caller
    rank_zero_info("info %d", 7)
    assert [r.getMessage() for r in caplog.records] == ["info 7"]


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


def _ranked(rank: int, world_size: int, directory: str) -> dict[str, Any]:
    def body(self: Lite) -> dict[str, Any]:
        order = Path(directory) / "order.txt"

        @rank_zero_only
        def only_zero() -> str:
            return "ran"

        with self.rank_zero_first():
            if self.global_rank == 0:
                time.sleep(1.0)  # rank 1 would write first if it did not wait
            with order.open("a") as f:
                f.write(f"{self.global_rank}\n")
        return {"only_zero": only_zero()}

    return Lite(accelerator="cpu", strategy="ddp", devices=world_size).run(body)


def test_rank_zero_only_and_rank_zero_first_in_two_processes(tmp_path: Path) -> None:
    results = run_processes(_ranked, 2, str(tmp_path), init=False, timeout=TIMEOUT)
    assert [r["only_zero"] for r in results] == ["ran", None]
    assert (tmp_path / "order.txt").read_text().split() == ["0", "1"]


def test_the_facades_own_warnings_print_once_over_two_processes(tmp_path: Path) -> None:
    # Under torchrun (here through `lite run`), strategy='ddp_spawn' runs as 'ddp' with a warning.
    (tmp_path / "train.py").write_text(
        textwrap.dedent(
            """
            from lite_facade import LightningLite

            class Lite(LightningLite):
                def run(self):
                    self.barrier()

            Lite(strategy="ddp_spawn").run()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITE_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "lite_facade", "run", "--accelerator", "cpu", "--devices", "2", "train.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("already started them: running as strategy='ddp'") == 1, proc.stderr
