"""The ``lite`` console script: real ``torch.distributed.run`` processes on 127.0.0.1 (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lite_facade import LightningLite, LiteConfigurationError
from lite_facade._cli import effective_flags, main
from lite_testing import free_port

LAUNCH_TIMEOUT_S = 240  # generous: the machine may be loaded; never asserted on

# Each rank prints what its LightningLite resolved and the result of a collective.
SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import torch
    from lite_facade import LightningLite

    class Lite(LightningLite):
        def run(self):
            total = self.all_reduce(torch.tensor(float(self.global_rank + 1)), reduce_op="sum")
            fields = [self.global_rank, self.world_size, self.node_rank, self._plan.strategy,
                      self._plan.precision, int(total), " ".join(sys.argv[1:])]
            # one write: the ranks share stdout
            os.write(1, ("RESULT " + " ".join(map(str, fields)) + "\\n").encode())
            if "--fail-rank" in sys.argv and self.global_rank == int(sys.argv[-1]):
                raise SystemExit(3)

    Lite().run()
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITE_", "TORCHELASTIC"))}
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GROUP_RANK",
    ):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def lite_run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lite_facade", "run", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def results(proc: subprocess.CompletedProcess[str]) -> list[list[str]]:
    rows = [line.split(" ", 7)[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return sorted(rows)


def test_help_of_the_console_script_and_of_python_m() -> None:
    script = Path(sys.executable).with_name("lite")
    assert script.exists(), "the `lite` console script is not installed next to this Python"
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "run" in top.stdout
    sub = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0
    for flag in (
        "--accelerator",
        "--strategy",
        "--devices",
        "--num-nodes",
        "--node-rank",
        "--main-address",
        "--main-port",
        "--precision",
        "-m",
    ):
        assert flag in sub.stdout
    assert "LITE_DEVICES" in sub.stdout
    module = subprocess.run(
        [sys.executable, "-m", "lite_facade", "run", "--help"], capture_output=True, text=True, timeout=60
    )
    assert module.returncode == 0 and module.stdout == sub.stdout


def test_two_cpu_processes_get_the_flags(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    proc = lite_run(
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--precision",
        "bf16",
        "train.py",
        "--epochs",
        "3",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RESULT" in proc.stdout, (proc.stdout, proc.stderr)
    # ranks 0 and 1 of 2, strategy ddp chosen for the external launcher, precision from the CLI,
    # sum of (rank + 1) = 3, the script's own arguments passed on
    assert results(proc) == [
        ["0", "2", "0", "ddp", "bf16-mixed", "3", "--epochs 3"],
        ["1", "2", "0", "ddp", "bf16-mixed", "3", "--epochs 3"],
    ]


def test_module_mode(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(SCRIPT)
    proc = lite_run(
        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "-m", "mypkg.train", "x", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert [r[:4] for r in results(proc)] == [["0", "2", "0", "ddp"], ["1", "2", "0", "ddp"]]
    assert all(r[-1] == "x" for r in results(proc))


def test_two_nodes_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    port = str(free_port())
    common = [
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--num-nodes",
        "2",
        "--main-address",
        "127.0.0.1",
        "--main-port",
        port,
    ]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "lite_facade", "run", *common, "--node-rank", str(rank), "train.py"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            out, err = node.communicate(timeout=LAUNCH_TIMEOUT_S)
            outputs.append((node.returncode, out, err))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=30)
    for code, _, err in outputs:
        assert code == 0, err
    rows = sorted(
        line.split(" ", 7)[1:5]
        for _, out, _ in outputs
        for line in out.splitlines()
        if line.startswith("RESULT ")
    )
    # global rank, world size, node rank, strategy: one process on each "node"
    assert rows == [["0", "2", "0", "ddp"], ["1", "2", "1", "ddp"]]


def test_a_failing_rank_fails_the_launch_and_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    proc = lite_run("--accelerator", "cpu", "--devices", "2", "train.py", "--fail-rank", "1", cwd=tmp_path)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "lite run: rank 1 (local rank 1 on node 0) failed with exit code 3" in proc.stderr


def test_bad_arguments_are_refused_before_launching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--devices", "two", str(tmp_path / "x.py")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["run", "missing.py"])
    assert "is not a file; to run a module, pass -m missing.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--num-nodes", "2", "--node-rank", "2", "-m", "x"])
    assert "--node-rank 2: expected 0 to 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--strategy", "dpp"],
            "--strategy 'dpp': unknown strategy 'dpp'; accepted names: ",
        ),
        (
            ["--precision", "17"],
            "--precision '17': precision='17' is not a precision lite knows; expected one of",
        ),
        (
            ["--accelerator", "quantum"],
            "--accelerator 'quantum': accelerator='quantum' is not a known accelerator",
        ),
        (["--main-port", "99999"], "--main-port 99999: expected a TCP port, 1 to 65535"),
    ],
)
def test_unknown_names_are_refused_before_any_process_starts(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('started')\n")
    with pytest.raises(SystemExit) as info:
        main(["run", *flags, str(script)])
    assert info.value.code == 2  # argparse's usage error, before torchrun is called
    err = capsys.readouterr().err
    assert message in err
    if flags[0] == "--strategy":  # the registered names (a third party's too, where one is installed)
        assert " ddp, ddp_fork," in err and " fsdp," in err


def test_known_spellings_pass_the_check() -> None:
    from lite_facade._cli import _check_names, _parser

    parser = _parser()
    for flags in (
        ["--strategy", "DDP", "--precision", "bf16", "--accelerator", "CPU"],
        ["--strategy", "ddp_notebook", "--precision", "16-mixed", "--accelerator", "auto"],
        [
            "--precision",
            "32",
            "--accelerator",
            "gpu",
            "--main-port",
            "29500",
        ],  # availability: each rank's to tell
    ):
        _check_names(parser.parse_args(["run", *flags, "x.py"]), parser)


# -- the LITE_* variables, in this process -------------------------------------------------------


def test_defaults_take_the_environment() -> None:
    env = {
        "LITE_ACCELERATOR": "cpu",
        "LITE_STRATEGY": "ddp",
        "LITE_DEVICES": "2",
        "LITE_NUM_NODES": "3",
        "LITE_PRECISION": "16-mixed",
    }
    flags: dict[str, Any] = dict(accelerator=None, strategy=None, devices=None, num_nodes=1, precision=32)
    assert effective_flags(env, **flags) == dict(
        accelerator="cpu", strategy="ddp", devices=2, num_nodes=3, precision="16-mixed"
    )
    assert effective_flags({"LITE_PRECISION": "64"}, **flags)["precision"] == 64
    assert effective_flags({}, **flags) == flags
    # explicit flags that say the same as the launcher are fine
    same = dict(accelerator="cpu", strategy="ddp", devices=2, num_nodes=3, precision="16-mixed")
    assert effective_flags(env, **same) == same


def test_an_explicit_flag_that_conflicts_names_both() -> None:
    env = {"LITE_DEVICES": "2", "LITE_PRECISION": "bf16"}
    with pytest.raises(LiteConfigurationError) as info:
        effective_flags(env, accelerator=None, strategy=None, devices=4, num_nodes=1, precision="16-mixed")
    message = str(info.value)
    assert (
        "devices=4 was passed to LightningLite, but the launcher set --devices 2 (LITE_DEVICES='2')"
        in message
    )
    assert "precision='16-mixed'" in message and "--precision bf16" in message


def test_the_constructor_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Lite(LightningLite):
        def run(self) -> None:
            pass

    monkeypatch.setenv("LITE_PRECISION", "bf16")
    monkeypatch.setenv("LITE_ACCELERATOR", "cpu")
    assert Lite()._plan.precision == "bf16-mixed"
    with pytest.raises(LiteConfigurationError, match="--precision bf16"):
        Lite(precision=64)
