"""Two-process runs end with exit code 0, every time, for each launcher (clean_exit_program.py).

A run whose wrapped model is still referenced at interpreter exit used to abort now and then
(``terminate called without an active exception``, exit code -6): the process group was left
to the end of the process. lite_collectives now destroys it from ``atexit``.

``ddp`` (the script relaunch) starts a fresh interpreter per run. ``ddp_spawn`` and ``ddp_fork``
launch from one interpreter ``RUNS`` times in a row (fresh ranks each time) and exit once at the
end, which keeps the test near a minute. ``LITE_CLEAN_EXIT_RUNS`` changes the count (default 20).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PROGRAM = Path(__file__).with_name("clean_exit_program.py")
RUNS = int(os.environ.get("LITE_CLEAN_EXIT_RUNS", "20"))
BAD_SIGNS = ("terminate called", "Aborted", "core dumped", "Traceback")


def _once(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(PROGRAM), *args],
        capture_output=True,
        text=True,
        timeout=120 + 30 * RUNS,  # spawn: each run starts two fresh interpreters
        cwd=PROGRAM.parent,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _script_relaunch_runs() -> list[tuple[int, str]]:
    with ThreadPoolExecutor(2) as pool:  # two runs at a time: each is mostly waiting on imports
        return list(pool.map(lambda _: _once("ddp"), range(RUNS)))


# 20 runs of each launcher took about 6 minutes on a loaded 2-core machine: more than the default.
@pytest.mark.timeout(300 + 45 * RUNS)
def test_every_launcher_exits_cleanly_every_time() -> None:
    with ThreadPoolExecutor(3) as pool:
        relaunch = pool.submit(_script_relaunch_runs)
        spawn = pool.submit(_once, "ddp_spawn", str(RUNS))
        fork = pool.submit(_once, "ddp_fork", str(RUNS))
        outcomes = {"ddp": relaunch.result(), "ddp_spawn": [spawn.result()], "ddp_fork": [fork.result()]}
    failures = []
    for launcher, runs in outcomes.items():
        for i, (code, output) in enumerate(runs):
            bad = [sign for sign in BAD_SIGNS if sign in output]
            finished = output.count("finished")
            expected = 2 if launcher == "ddp" else 1  # the relaunched rank prints it too
            if code != 0 or bad or finished != expected:
                failures.append(f"{launcher} run {i}: exit code {code}, {bad}, output:\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert len(outcomes["ddp"]) == RUNS
