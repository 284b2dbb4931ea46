"""The launchers as real processes: script relaunch, python -m, torchrun, two nodes, spawn, fork, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from strategies_testutil import assert_params_close, child_env, reference_params, train, write_script

import lite_strategies
from lite_strategies import ProcessFailedError, StrategyError
from lite_testing import free_port

TIMEOUT = 90


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=env or child_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def _saved_params(path: Path) -> dict[str, torch.Tensor]:
    return lite_strategies.TorchCheckpointIO().load_checkpoint(path)["model"]


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "python-m"])
def test_script_launcher_trains_like_one_process(tmp_path: Path, as_module: bool) -> None:
    write_script(tmp_path, name="train_script.py")
    out = tmp_path / "ckpt.pt"
    target = ["-m", "train_script"] if as_module else [str(tmp_path / "train_script.py")]
    proc = _run([sys.executable, *target, "ddp", "2", "1", str(out), ""], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Rank 0 runs in the launching process, rank 1 in the re-run script: both reach the end.
    assert "RESULT-WORLD-SIZE 2 RANK 0" in proc.stdout
    assert "RESULT-WORLD-SIZE 2 RANK 1" in proc.stdout
    assert_params_close(_saved_params(out), reference_params())


def test_torchrun_is_detected_and_starts_no_more_processes(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    out = tmp_path / "ckpt.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    proc = _run([*cmd, str(script), "ddp", "2", "1", str(out), ""], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("RESULT-WORLD-SIZE 2") == 2  # two processes, not four
    assert_params_close(_saved_params(out), reference_params())


def test_two_nodes_on_localhost(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    out = tmp_path / "ckpt.pt"
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "ddp", "1", "2", str(out), ""],
            cwd=tmp_path,
            env=child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "RANK 0" in outputs[0][0] and "RANK 1" in outputs[1][0]
    assert_params_close(_saved_params(out), reference_params())


@pytest.mark.parametrize("fail", ["raise:1", "kill:1", "raise:0"])
def test_script_launcher_a_failing_rank_fails_the_run_fast_and_is_named(tmp_path: Path, fail: str) -> None:
    script = write_script(tmp_path)
    start = time.monotonic()
    proc = _run([sys.executable, str(script), "ddp", "2", "1", str(tmp_path / "c.pt"), fail], cwd=tmp_path)
    elapsed = time.monotonic() - start
    rank = fail.split(":")[1]
    assert proc.returncode != 0
    if fail.startswith("raise"):
        assert f"boom on rank {rank}" in proc.stderr
    if fail == "raise:1" or fail.startswith("kill"):
        assert f"rank {rank} " in proc.stderr, proc.stderr
    if fail.startswith("kill"):
        assert "SIGKILL" in proc.stderr, proc.stderr
    assert elapsed < TIMEOUT  # bounded (the subprocess timeout would have raised)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("name", "mode"), [("ddp", "hang"), ("ddp_fork", "hang"), ("ddp", "block"), ("ddp_fork", "block")]
)
def test_interrupt_stops_every_child(tmp_path: Path, name: str, mode: str) -> None:
    # "block": rank 0 waits inside a gloo barrier, in C++, where Python cannot run its SIGINT
    # handler; with the script launcher rank 0 is the launcher itself.
    script = write_script(tmp_path)
    out = tmp_path / "hang"
    proc = subprocess.Popen(
        [sys.executable, str(script), name, "2", "1", str(out), mode],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts the tests in the background makes them ignore SIGINT, and the
        # launcher would inherit that: give it the default handler, as in a terminal.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        pid_files = [Path(f"{out}.{rank}.pid") for rank in (0, 1)]
        while not all(f.exists() and f.read_text() for f in pid_files):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        pids = [int(f.read_text()) for f in pid_files]
        time.sleep(1.0)  # let rank 0 enter the barrier
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)  # only the launcher: it must stop the children itself
        _, stderr = proc.communicate(timeout=30)
        print(f"{name}/{mode}: the launcher exited {time.monotonic() - sent:.2f} s after SIGINT")
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr, stderr
    for pid in pids:
        if pid != proc.pid:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(pid), f"rank process {pid} survived the interrupt"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_spawn_without_main_guard_says_how_to_fix(tmp_path: Path) -> None:
    script = write_script(tmp_path, guarded=False)
    proc = _run(
        [sys.executable, str(script), "ddp_spawn", "2", "1", str(tmp_path / "c.pt"), ""], cwd=tmp_path
    )
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in proc.stderr
    assert "StrategyError" in proc.stderr


def _returns_tensors(strategy: lite_strategies.Strategy) -> dict[str, object]:
    out = train(strategy)
    return {"params": out["params"], "nested": [torch.arange(3) * (strategy.global_rank + 1), "text"]}


@pytest.mark.parametrize("name", ["ddp_spawn", "ddp_fork"])
def test_spawn_launcher_returns_rank_zero_value_and_trains_like_one_process(name: str) -> None:
    strategy = lite_strategies.get_strategy_spec(name).build(devices=[torch.device("cpu")] * 2)
    assert strategy.launcher is not None
    result = strategy.launcher.launch(_returns_tensors, strategy)
    assert_params_close(result["params"], reference_params())
    assert torch.equal(result["nested"][0], torch.arange(3))  # rank 0's value, after the child exited
    assert result["nested"][1] == "text"


def _fail(strategy: lite_strategies.Strategy, fail: str) -> None:
    train(strategy, fail=fail)


@pytest.mark.parametrize("rank", [0, 1])
def test_spawn_launcher_reraises_with_the_rank_traceback(rank: int) -> None:
    strategy = lite_strategies.DDPForkStrategy(devices=[torch.device("cpu")] * 2)
    assert strategy.launcher is not None
    with pytest.raises(
        ProcessFailedError, match=f"rank {rank} raised RuntimeError: boom on rank {rank}"
    ) as info:
        strategy.launcher.launch(_fail, strategy, f"raise:{rank}")
    assert info.value.rank == rank
    assert "in _fail" in str(info.value)  # the remote traceback
    assert isinstance(info.value.__cause__, RuntimeError)


def test_spawn_launcher_names_a_killed_rank() -> None:
    strategy = lite_strategies.DDPForkStrategy(devices=[torch.device("cpu")] * 2)
    assert strategy.launcher is not None
    with pytest.raises(ProcessFailedError, match=r"rank 1 was killed by signal 9 \(SIGKILL\)") as info:
        strategy.launcher.launch(_fail, strategy, "kill:1")
    assert info.value.exitcode == -9


@pytest.mark.parametrize("attempt", range(4))
@pytest.mark.parametrize("name", ["ddp_spawn", "ddp_fork"])
def test_spawn_launcher_names_the_killed_rank_not_the_one_that_lost_its_peer(name: str, attempt: int) -> None:
    # Rank 1 is SIGKILLed in the middle of training; rank 0 then fails in its all-reduce with a
    # broken connection, often before the launcher sees rank 1 exit. The blame goes to rank 1.
    strategy = lite_strategies.get_strategy_spec(name).build(devices=[torch.device("cpu")] * 2)
    assert strategy.launcher is not None and strategy.launcher_kind == name.removeprefix("ddp_")
    with pytest.raises(ProcessFailedError, match=r"^rank 1 was killed by signal 9 \(SIGKILL\)") as info:
        strategy.launcher.launch(_fail, strategy, "kill:1")
    assert (info.value.rank, info.value.exitcode) == (1, -9)


class _Exited:
    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode


@pytest.mark.parametrize(
    ("exits", "reports", "first_seen", "blamed"),
    [
        ([1, -9], {0: "DistBackendError: Connection closed by peer"}, 0, 1),  # killed beats broken connection
        (
            [1, 1],
            {0: "RuntimeError: Connection reset by peer", 1: "RuntimeError: boom"},
            0,
            1,
        ),  # a real error
        ([-15, 1], {1: "ValueError: bad"}, 0, 1),  # SIGTERM: the launcher stopping it
        ([0, -11, 1], {2: "RuntimeError: boom"}, 2, 1),  # a crash (SIGSEGV) before a raise
        ([1, 1], {0: "RuntimeError: a", 1: "RuntimeError: b"}, 1, 1),  # a tie: the first seen
        ([3, -15], {}, 1, 0),  # a plain non-zero exit beats SIGTERM
    ],
)
def test_the_root_cause_is_blamed_among_several_failures(
    exits: list[int], reports: dict[int, str], first_seen: int, blamed: int
) -> None:
    from lite_strategies.launchers._join import ProcessReport, root_cause

    def report(index: int) -> ProcessReport | None:
        return ProcessReport(reports[index], f"Traceback of {index}") if index in reports else None

    error = root_cause([_Exited(code) for code in exits], 4, report, first_seen)
    assert error.rank == 4 + blamed
    assert str(error).startswith(f"rank {4 + blamed} ")


def test_spawn_refuses_an_unpicklable_function() -> None:
    strategy = lite_strategies.DDPSpawnStrategy(devices=[torch.device("cpu")] * 2)
    assert strategy.launcher is not None
    with pytest.raises(StrategyError, match="picklable"):
        strategy.launcher.launch(lambda: None)


def test_launcher_runs_in_this_process_under_an_external_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # What torchrun sets: the launcher must start nothing and run the function here.
    port = free_port()
    for key, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1", GROUP_RANK="0", NODE_RANK="0", TORCHELASTIC_RUN_ID="test",
    ).items():  # fmt: skip
        monkeypatch.setenv(key, value)
    for name in ("ddp", "ddp_spawn", "ddp_fork"):
        strategy = lite_strategies.get_strategy_spec(name).build()
        assert strategy.cluster_environment.creates_processes_externally
        assert strategy.launcher is not None
        assert strategy.launcher.launch(os.getpid) == os.getpid()
        strategy.teardown()


_STUCK_CHILD = """
import ctypes, os, sys, time
import torch
from lite_strategies import DDPForkStrategy

def body(strategy, out):
    with open(f"{out}.{strategy.global_rank}.pid", "w") as f:
        f.write(str(os.getpid()))
    if strategy.global_rank == 1:
        ctypes.PyDLL(None).sleep(120)  # stuck in C code holding the GIL: no Python thread can run
    time.sleep(120)

if __name__ == "__main__":
    strategy = DDPForkStrategy(accelerator="cpu", devices=[torch.device("cpu")] * 2)
    strategy.launcher.launch(body, strategy, sys.argv[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_stuck_holding_the_gil_dies_with_its_killed_launcher(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK_CHILD)
    out = tmp_path / "stuck"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], cwd=tmp_path, env=child_env())
    try:
        deadline = time.monotonic() + TIMEOUT
        pid_files = [Path(f"{out}.{rank}.pid") for rank in (0, 1)]
        while not all(f.exists() and f.read_text() for f in pid_files):
            assert time.monotonic() < deadline and proc.poll() is None, "the ranks did not start"
            time.sleep(0.1)
        pids = [int(f.read_text()) for f in pid_files]
        time.sleep(0.5)  # rank 1 is inside the GIL-holding call by now
        proc.kill()  # SIGKILL: the launcher cannot clean up
        proc.wait(timeout=10)
        for pid in pids:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(pid), f"rank process {pid} outlived its killed launcher"
    finally:
        proc.kill()
        for pid_file in tmp_path.glob("stuck.*.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


_FLAGS_SCRIPT = """
import json, sys
import torch
from lite_strategies import DDPStrategy

def body(strategy, out):
    with open(f"{out}.{strategy.global_rank}.json", "w") as f:
        json.dump({"dev_mode": sys.flags.dev_mode, "warnoptions": sys.warnoptions, "argv": sys.argv[1:]}, f)

if __name__ == "__main__":
    strategy = DDPStrategy(accelerator="cpu", devices=[torch.device("cpu")] * 2)
    strategy.launcher.launch(body, strategy, sys.argv[1])
"""


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "python-m"])
def test_script_launcher_passes_interpreter_options_on(tmp_path: Path, as_module: bool) -> None:
    import json

    (tmp_path / "flags_script.py").write_text(_FLAGS_SCRIPT)
    out = tmp_path / "flags"
    target = ["-m", "flags_script"] if as_module else [str(tmp_path / "flags_script.py")]
    proc = _run([sys.executable, "-X", "dev", "-W", "ignore::UserWarning", *target, str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1], seen  # the re-run rank got the same interpreter options
    assert seen[1]["dev_mode"] is True and "ignore::UserWarning" in seen[1]["warnoptions"]
