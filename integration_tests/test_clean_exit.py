"""Two-process runs end with exit code 0, every time, for each launcher (clean_exit_program.py).

A run whose wrapped model is still referenced at interpreter exit used to abort now and then
(``terminate called without an active exception``, exit code -6): the process group was left
to the end of the process. lite_collectives now destroys it from ``atexit``. Later, the buffers
of a small all_gather or an object broadcast, borrowed from Python memory, could be freed by
gloo's worker thread during the exit, which needs the GIL and aborted the same way: every
tensor lite_collectives hands to the backend now owns its memory.

``ddp`` (the script relaunch) and ``embedded`` (torchrun, the facade used without run()) start
fresh interpreters per run. ``ddp_spawn`` and ``ddp_fork``
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

from lite_testing import free_port

PROGRAM = Path(__file__).with_name("clean_exit_program.py")
RUNS = int(os.environ.get("LITE_CLEAN_EXIT_RUNS", "20"))
BAD_SIGNS = ("terminate called", "Aborted", "core dumped", "Traceback")


def _once(*args: str, torchrun: bool = False) -> tuple[int, str]:
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", *(launch if torchrun else []), str(PROGRAM), *args],
        capture_output=True,
        text=True,
        timeout=120 + 30 * RUNS,  # spawn: each run starts two fresh interpreters
        cwd=PROGRAM.parent,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _fresh_interpreter_runs() -> dict[str, list[tuple[int, str]]]:
    with ThreadPoolExecutor(2) as pool:  # two runs at a time: each is mostly waiting on imports
        relaunch = [pool.submit(_once, "ddp") for _ in range(RUNS)]
        embedded = [pool.submit(_once, "embedded", torchrun=True) for _ in range(RUNS)]
        return {"ddp": [f.result() for f in relaunch], "embedded": [f.result() for f in embedded]}


# 20 runs of each launcher took about 6 minutes on a loaded 2-core machine: more than the default.
@pytest.mark.timeout(300 + 45 * RUNS)
def test_every_launcher_exits_cleanly_every_time() -> None:
    with ThreadPoolExecutor(3) as pool:
        fresh = pool.submit(_fresh_interpreter_runs)
        spawn = pool.submit(_once, "ddp_spawn", str(RUNS))
        fork = pool.submit(_once, "ddp_fork", str(RUNS))
        outcomes = {**fresh.result(), "ddp_spawn": [spawn.result()], "ddp_fork": [fork.result()]}
    failures = []
    for launcher, runs in outcomes.items():
        for i, (code, output) in enumerate(runs):
            bad = [sign for sign in BAD_SIGNS if sign in output]
            finished = output.count("finished")
            expected = 2 if launcher in ("ddp", "embedded") else 1  # both ranks run the script's end
            if code != 0 or bad or finished != expected:
                failures.append(f"{launcher} run {i}: exit code {code}, {bad}, output:\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert len(outcomes["ddp"]) == len(outcomes["embedded"]) == RUNS
