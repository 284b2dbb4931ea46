"""init_process_group / destroy_process_group in real processes (each test forks its own)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import lite_collectives as lc
from lite_collectives import ClusterEnvironment, LightningEnvironment
from lite_testing import free_port, run_processes


def _raises(fn: Any, *args: Any, **kwargs: Any) -> str:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "did not raise"


class MyCluster(ClusterEnvironment):
    """The spec's custom cluster: only main_address, main_port and world_size."""

    def __init__(self, port: int, size: int) -> None:
        self._port, self._size = port, size

    @property
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    def main_port(self) -> int:
        return self._port

    def world_size(self) -> int:
        return self._size


def _lifecycle(rank: int, world: int, other_port: int) -> dict[str, Any]:
    out: dict[str, Any] = {"before": lc.is_initialized(), "env": type(lc.detect_environment()).__name__}
    launcher_port = os.environ["MASTER_PORT"]
    lc.init_process_group(timeout=timedelta(seconds=20))  # detected: torchrun-style variables
    out["backend"] = dist.get_backend()
    lc.init_process_group(timeout=20.0)  # same settings: nothing happens
    out["conflict_backend"] = _raises(lc.init_process_group, backend="mpi", timeout=20)
    out["conflict_timeout"] = _raises(lc.init_process_group, timeout=5)
    out["sum"] = lc.all_reduce(torch.tensor(rank + 1)).item()
    lc.destroy_process_group()
    lc.destroy_process_group()  # twice is fine
    out["after"] = lc.is_initialized()
    out["port_restored"] = os.environ["MASTER_PORT"] == launcher_port

    lc.init_process_group(MyCluster(other_port, world), timeout=20)
    out["custom_port_set"] = os.environ["MASTER_PORT"] == str(other_port)
    out["custom_gather"] = lc.all_gather(torch.tensor([rank]))
    out["custom_ranks"] = (lc.world_size(), lc.global_rank())
    lc.destroy_process_group()
    out["custom_port_restored"] = os.environ["MASTER_PORT"] == launcher_port
    return out


def test_init_detects_environment_is_idempotent_and_restores() -> None:
    world = 2
    other_port = free_port()
    results = run_processes(_lifecycle, world, other_port, init=False, timeout=40)
    for rank, out in enumerate(results):
        assert out["before"] is False and out["after"] is False
        assert out["env"] == "TorchElasticEnvironment"
        assert out["backend"] == "gloo"
        assert "backend: running 'gloo', asked 'mpi'" in out["conflict_backend"]
        assert out["conflict_backend"].startswith("CollectiveError: a process group is already initialized")
        assert "timeout: running datetime.timedelta(seconds=20)" in out["conflict_timeout"]
        assert out["sum"] == sum(r + 1 for r in range(world))
        assert out["port_restored"] and out["custom_port_set"] and out["custom_port_restored"]
        assert torch.equal(out["custom_gather"], torch.arange(world).reshape(world, 1))
        assert out["custom_ranks"] == (world, rank)


def _environment(size: int, rank: int) -> LightningEnvironment:
    env = LightningEnvironment()
    env.set_world_size(size)
    env.set_global_rank(rank)
    return env


def _rendezvous_errors(rank: int, world: int, taken_port: int, silent_port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    launcher_port = os.environ["MASTER_PORT"]
    os.environ["MASTER_PORT"] = str(taken_port)
    out["taken"] = _raises(lc.init_process_group, _environment(2, 0), timeout=5)
    os.environ["MASTER_PORT"] = str(silent_port)
    out["timeout"] = _raises(lc.init_process_group, _environment(2, 0), timeout=1)
    out["env_restored"] = os.environ["MASTER_PORT"] == str(silent_port)
    # A node that never arrives, seen from the other side: rank 1 finds no rank 0 to join.
    out["no_main"] = _raises(lc.init_process_group, _environment(2, 1), timeout=1)
    del os.environ["MASTER_PORT"]
    out["no_port"] = _raises(lc.init_process_group, _environment(2, 1), timeout=5)
    out["bad_rank"] = _raises(lc.init_process_group, _environment(2, 2), timeout=5)
    out["no_nccl"] = None if dist.is_nccl_available() else _raises(lc.init_process_group, device_type="cuda")
    out["initialized_after_errors"] = lc.is_initialized()
    # A one-process group: collectives add a leading dimension of 1.
    os.environ["MASTER_PORT"] = launcher_port
    lc.init_process_group(_environment(1, 0), timeout=5)
    out["single"] = lc.all_gather(torch.tensor([5.0]))
    lc.destroy_process_group()
    return out


def test_rendezvous_failures_are_clear() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        silent = free_port()
        out = run_processes(_rendezvous_errors, 1, taken, silent, init=False, timeout=30)[0]
    assert out["taken"].startswith("ClusterEnvironmentError: rank 0 cannot listen on")
    assert f"127.0.0.1:{taken} (rank 0 of 2, timeout 5 s)" in out["taken"]
    assert "already taken" in out["taken"]
    assert out["timeout"].startswith(
        f"CollectiveTimeoutError: rendezvous at 127.0.0.1:{silent} (rank 0 of 2, timeout 1 s)"
    )
    assert "timed out: 1 of 2 ranks joined (from node(s) 0); missing rank(s): 1." in out["timeout"]
    assert out["no_main"].startswith(
        f"CollectiveTimeoutError: rendezvous at 127.0.0.1:{silent} (rank 1 of 2, timeout 1 s) timed out: "
        "rank 1 could not reach the store of rank 0"
    )
    assert out["env_restored"]
    assert out["no_port"].startswith("ClusterEnvironmentError: rank 1 of 2 cannot guess the port")
    assert "MASTER_PORT" in out["no_port"]
    assert "global rank 2 but world size 2" in out["bad_rank"]
    if out["no_nccl"] is not None:
        assert out["no_nccl"].startswith("CollectiveError: backend 'nccl' is not available")
    assert out["initialized_after_errors"] is False
    assert torch.equal(out["single"], torch.tensor([[5.0]]))


def _listening_addresses() -> list[str]:
    """The local addresses of this process's listening TCP sockets, from /proc (what `ss -ltnp` shows)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    found.append(local)
    return found


def _listens(rank: int, world: int) -> list[str]:
    lc.init_process_group(timeout=20)
    lc.all_reduce(torch.ones(1))  # gloo's own connections are up
    addresses = _listening_addresses()
    lc.destroy_process_group()
    return addresses


def test_single_node_run_listens_on_loopback_only() -> None:
    results = run_processes(_listens, 2, init=False, timeout=40)
    loopback = ("0100007F:", "00000000000000000000000001000000:", "0000000000000000FFFF00000100007F:")
    assert results[0], "rank 0 must listen (the rendezvous store)"
    for addresses in results:
        assert all(a.startswith(loopback) for a in addresses), addresses
