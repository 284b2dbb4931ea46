"""Checkpoint IO: atomic writes, weights-only loads by default, clear errors for bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import strategies_testutil  # noqa: F401  (builds torch's first optimizer outside any test)
import torch

from lite_strategies import CheckpointError, SingleDeviceStrategy, TorchCheckpointIO


class _Custom:
    def __init__(self, value: int) -> None:
        self.value = value


class _FailsToPickle:
    def __reduce__(self) -> Any:
        raise RuntimeError("writer failed mid-save")


def _state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 64, generator=g), "step": seed, "nested": {"b": [torch.ones(3) * seed]}}


@pytest.mark.parametrize("fsync", [False, True])
def test_roundtrip(tmp_path: Path, fsync: bool) -> None:
    io = TorchCheckpointIO(fsync=fsync)
    path = tmp_path / "sub" / "ckpt.pt"  # parent directories are created
    io.save_checkpoint(_state(1), path)
    loaded = io.load_checkpoint(path)
    torch.testing.assert_close(loaded["w"], _state(1)["w"])
    assert loaded["step"] == 1
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_a_failing_writer_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    path = tmp_path / "ckpt.pt"
    io.save_checkpoint(_state(1), path)
    with pytest.raises(RuntimeError, match="writer failed mid-save"):
        io.save_checkpoint({**_state(2), "bad": _FailsToPickle()}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]


_SAVER = """
import sys, torch
from lite_strategies import TorchCheckpointIO
io, path = TorchCheckpointIO(), sys.argv[1]
state = {"w": torch.randn(4_000_000), "step": 0}
io.save_checkpoint(state, path)
print("first", flush=True)
step = 0
while True:
    step += 1
    state["step"] = step
    io.save_checkpoint(state, path)
"""


def test_a_save_killed_mid_write_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "first"
        time.sleep(1.0)  # the loop writes ~16 MB per save: a kill lands mid-write most of the time
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    loaded = TorchCheckpointIO().load_checkpoint(path)
    assert loaded["w"].shape == (4_000_000,)
    assert loaded["step"] >= 0


def test_truncated_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    TorchCheckpointIO().save_checkpoint(_state(1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*ckpt\.pt' \(\d+ bytes\) is truncated"):
        TorchCheckpointIO().load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"\x80\x04garbage"])
def test_non_checkpoint_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        TorchCheckpointIO().load_checkpoint(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        TorchCheckpointIO().load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        TorchCheckpointIO().load_checkpoint(tmp_path)


def test_arbitrary_objects_need_an_explicit_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    TorchCheckpointIO().save_checkpoint({"obj": _Custom(7)}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        TorchCheckpointIO().load_checkpoint(path)
    assert TorchCheckpointIO().load_checkpoint(path, weights_only=False)["obj"].value == 7


def test_remove_checkpoint(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    path = tmp_path / "ckpt.pt"
    io.save_checkpoint(_state(1), path)
    io.remove_checkpoint(path)
    io.remove_checkpoint(path)  # missing is fine
    assert not path.exists()


def test_saved_file_has_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    TorchCheckpointIO().save_checkpoint(_state(1), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_strategy_saves_modules_and_optimizers_as_state_dicts(tmp_path: Path) -> None:
    strategy = SingleDeviceStrategy()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "ckpt.pt"
    strategy.save_checkpoint(path, {"model": model, "optimizer": optimizer, "epoch": 3})
    loaded = strategy.load_checkpoint(path)
    assert loaded["model"].keys() == model.state_dict().keys()
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert loaded["epoch"] == 3
    assert loaded["model"]["weight"].device == strategy.root_device


# -- issue 15: stale temporaries, errors naming the target, random bytes, URLs ------------------------


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "first"
        # Kill it while a temporary exists (the loop spends most of its time writing one).
        deadline = time.monotonic() + 30
        while not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]:
            assert time.monotonic() < deadline, "the saver never wrote a temporary file"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if not left:  # the kill landed between two saves: make the leftover by hand, as a killed save would
        (tmp_path / f".ckpt.pt.{proc.pid}.abcd.tmp").write_bytes(b"partial")
    unrelated = tmp_path / ".other.pt.1.abcd.tmp"  # a temporary of another target stays
    unrelated.write_bytes(b"x")
    TorchCheckpointIO().save_checkpoint(_state(3), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pt", unrelated.name])
    assert TorchCheckpointIO().load_checkpoint(path)["step"] == 3


def test_a_failed_save_names_the_target_not_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError) as info:
        TorchCheckpointIO().save_checkpoint({"bad": _FailsToPickle()}, path)
    message = str(info.value)
    assert str(path) in message and ".tmp" not in message and "writer failed mid-save" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_reported_as_corrupt_never_as_unsafe(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "ckpt.pt"
    g = torch.Generator().manual_seed(seed)
    data = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    for content in (data, b"\x80\x02" + data, b"PK\x03\x04" + data):
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            TorchCheckpointIO().load_checkpoint(path)
        assert "ckpt.pt" in str(info.value)
        assert "weights_only=False" not in str(info.value)


def test_a_truncated_checkpoint_of_objects_is_corrupt_not_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    TorchCheckpointIO().save_checkpoint({"obj": _Custom(7), "w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(CheckpointError) as info:
        TorchCheckpointIO().load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


def test_file_urls_are_local_atomic_writes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    url = path.as_uri()
    TorchCheckpointIO().save_checkpoint(_state(4), url)
    assert path.is_file()
    assert TorchCheckpointIO().load_checkpoint(url)["step"] == 4


def test_a_url_never_becomes_a_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"s3://bucket/x\.ckpt"):
        TorchCheckpointIO().save_checkpoint(_state(1), "s3://bucket/x.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_url_without_fsspec_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['fsspec'] = None\n"
        "from lite_strategies import TorchCheckpointIO, CheckpointError\n"
        "try:\n    TorchCheckpointIO().save_checkpoint({'a': 1}, 'memory://x/ckpt.pt')\n"
        "except CheckpointError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "pip install fsspec" in out.stdout and "memory://x/ckpt.pt" in out.stdout, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_memory_url_round_trip() -> None:
    fsspec = pytest.importorskip("fsspec")
    io = TorchCheckpointIO()
    url = "memory://lite-tests/run/ckpt.pt"
    io.save_checkpoint(_state(5), url)
    loaded = io.load_checkpoint(url, map_location="cpu")
    torch.testing.assert_close(loaded["w"], _state(5)["w"])
    assert loaded["nested"]["b"][0].tolist() == [5.0, 5.0, 5.0]
    with pytest.raises(CheckpointError, match="weights_only=False"):
        io.save_checkpoint({"obj": _Custom(1)}, url)
        io.load_checkpoint(url)
    fs = fsspec.filesystem("memory")
    fs.pipe("/lite-tests/run/junk.pt", b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        io.load_checkpoint("memory://lite-tests/run/junk.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        io.load_checkpoint("memory://lite-tests/run/missing.pt")
    io.remove_checkpoint(url)
    assert not fs.exists("/lite-tests/run/ckpt.pt")


def test_the_state_walker_rebuilds_containers_and_keeps_named_tuples_whole() -> None:
    from collections import namedtuple

    from lite_strategies import map_state

    Pair = namedtuple("Pair", "a b")
    state = {"x": [1, (2, 3)], "pair": Pair(4, 5), "empty": {}}
    seen: list[tuple[object, ...]] = []
    result = map_state(state, lambda value, path: seen.append(path) or (value, path))
    assert result == {
        "x": [(1, ("x", 0)), ((2, ("x", 1, 0)), (3, ("x", 1, 1)))],
        "pair": (Pair(4, 5), ("pair",)),
        "empty": {},
    }
    assert isinstance(result["x"][1], tuple) and seen == [("x", 0), ("x", 1, 0), ("x", 1, 1), ("pair",)]
    marked = map_state(
        {"m": {"keep": 1}}, lambda value, _: "leaf", is_leaf=lambda v: isinstance(v, dict) and "keep" in v
    )
    assert marked == {"m": "leaf"}


def test_a_stateful_object_is_saved_as_its_state_dict_and_loaded_in_place(tmp_path: Path) -> None:
    strategy = SingleDeviceStrategy()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    strategy.save_checkpoint(
        tmp_path / "c.pt", {"model": model, "scheduler": scheduler, "nested": [scheduler]}
    )
    saved = strategy.load_checkpoint(tmp_path / "c.pt")  # weights_only: only plain state dicts inside
    assert saved["scheduler"]["last_epoch"] == 1 and saved["nested"][0] == saved["scheduler"]
    fresh_optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    fresh = torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=1, gamma=0.5)
    state = {"scheduler": fresh}
    rest = strategy.load_checkpoint(tmp_path / "c.pt", state)
    assert state["scheduler"] is fresh and fresh.last_epoch == 1 and sorted(rest) == ["model", "nested"]


def test_the_key_check_names_what_is_missing_and_what_is_there(tmp_path: Path) -> None:
    strategy = SingleDeviceStrategy()
    strategy.save_checkpoint(tmp_path / "c.pt", {"a": 1, "b": 2})
    with pytest.raises(CheckpointError, match=r"has no entries \['z'\] .* it has \['a', 'b'\]"):
        strategy.load_checkpoint(tmp_path / "c.pt", {"a": 0, "z": 0})
    strategy.save_checkpoint(tmp_path / "list.pt", [1, 2])
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        strategy.load_checkpoint(tmp_path / "list.pt", {"a": 0})
