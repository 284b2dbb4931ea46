"""Cluster environments, each read from a table of real variable sets."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from lite_collectives import (
    ENVIRONMENTS,
    ClusterEnvironment,
    ClusterEnvironmentError,
    KubeflowEnvironment,
    LightningEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)
from lite_collectives._environments import expand_hostlist

# Every variable any environment reads: cleared before each test so the host's own job
# (if the tests run inside SLURM, say) cannot leak into the tables.
KNOWN_VARIABLES = [
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
    "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NODELIST", "SLURM_JOB_NODELIST", "LSB_JOBID", "LSB_HOSTS",
    "LSB_MCPU_HOSTS", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK",
    "KUBERNETES_PORT", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "PMI_LOCAL_RANK", "PMI_LOCAL_SIZE",
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KNOWN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)


HOST = socket.gethostname()

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29400",
}  # fmt: skip
SLURM = {
    "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
    "SLURM_JOB_ID": "1234567", "SLURM_JOB_NAME": "train.sh", "SLURM_NODELIST": "node[001-003,7],other",
}  # fmt: skip
LSF = {
    "LSB_JOBID": "98765", "LSB_MCPU_HOSTS": f"batch1 1 other-host 42 {HOST} 42",
    "JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": "2", "JSM_NAMESPACE_LOCAL_RANK": "0",
}  # fmt: skip
KUBEFLOW = {
    "KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "pytorchjob-master-0", "MASTER_PORT": "23456",
    "WORLD_SIZE": "3", "RANK": "2",
}  # fmt: skip
OPEN_MPI = {
    "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "mpi-head", "MASTER_PORT": "31000",
}  # fmt: skip
INTEL_MPI = {
    "PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "MASTER_PORT": "31001",
}  # fmt: skip
LOCAL_CHILD = {
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "40000",
    "WORLD_SIZE": "2",
    "RANK": "1",
    "LOCAL_RANK": "1",
}


# (environment, variables, world_size, global_rank, local_rank, node_rank, main_address, main_port, external)
TABLE = [
    (TorchElasticEnvironment, TORCHRUN, 4, 3, 1, 1, "10.1.2.3", 29400, True),
    (SLURMEnvironment, SLURM, 8, 5, 1, 2, "node001", 10000 + 4567, True),
    (
        SLURMEnvironment,
        {**SLURM, "MASTER_PORT": "15000", "MASTER_ADDR": "head"},
        8,
        5,
        1,
        2,
        "head",
        15000,
        True,
    ),
    (LSFEnvironment, LSF, 4, 2, 0, 1, "other-host", 10000 + 8765, True),
    (
        LSFEnvironment,
        {**LSF, "LSB_MCPU_HOSTS": "", "LSB_HOSTS": f"batch1 {HOST} {HOST}"},
        4,
        2,
        0,
        0,
        HOST,
        18765,
        True,
    ),
    (KubeflowEnvironment, KUBEFLOW, 3, 2, 0, 2, "pytorchjob-master-0", 23456, True),
    (MPIEnvironment, OPEN_MPI, 4, 3, 1, 1, "mpi-head", 31000, True),
    (LightningEnvironment, LOCAL_CHILD, 2, 1, 1, 0, "127.0.0.1", 40000, True),
    (
        LightningEnvironment,
        {"NODE_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1"},
        1,
        0,
        0,
        1,
        "n0",
        1,
        False,
    ),
]


@pytest.mark.parametrize(
    ("cls", "variables", "size", "rank", "local", "node", "address", "port", "external"),
    TABLE,
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_environment_reads_its_variables(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[ClusterEnvironment],
    variables: dict[str, str],
    size: int,
    rank: int,
    local: int,
    node: int,
    address: str,
    port: int,
    external: bool,
) -> None:
    _set(monkeypatch, variables)
    env = cls()
    assert cls.detect()
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (
        size,
        rank,
        local,
        node,
    )
    assert (env.main_address, env.main_port) == (address, port)
    assert env.creates_processes_externally is external
    env.teardown()


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is not None, reason="mpi4py would broadcast the port")
def test_mpi_without_mpi4py_on_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, INTEL_MPI)
    env = MPIEnvironment()
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 1, 0)
    assert (env.main_address, env.main_port) == ("127.0.0.1", 31001)
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(ClusterEnvironmentError, match="MASTER_PORT"):
        _ = env.main_port
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")  # two nodes now: the address cannot be guessed
    with pytest.raises(ClusterEnvironmentError, match="MASTER_ADDR"):
        _ = env.main_address


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, LightningEnvironment),
        (TORCHRUN, TorchElasticEnvironment),
        ({k: v for k, v in TORCHRUN.items() if k != "TORCHELASTIC_RUN_ID"}, TorchElasticEnvironment),
        (SLURM, SLURMEnvironment),
        ({**SLURM, "SLURM_JOB_NAME": "bash"}, LightningEnvironment),
        ({**SLURM, "SLURM_JOB_NAME": "interactive"}, LightningEnvironment),
        ({**SLURM, **TORCHRUN}, TorchElasticEnvironment),  # torchrun inside an allocation wins
        (LSF, LSFEnvironment),
        ({k: v for k, v in LSF.items() if k != "LSB_MCPU_HOSTS"}, LightningEnvironment),
        (KUBEFLOW, KubeflowEnvironment),
        ({k: v for k, v in KUBEFLOW.items() if k != "KUBERNETES_PORT"}, LightningEnvironment),
        ({**KUBEFLOW, **OPEN_MPI}, KubeflowEnvironment),
        (OPEN_MPI, MPIEnvironment),
        (INTEL_MPI, MPIEnvironment),
        (LOCAL_CHILD, LightningEnvironment),
    ],
)
def test_detect_environment_order(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: type[ClusterEnvironment]
) -> None:
    _set(monkeypatch, variables)
    assert type(detect_environment()) is expected


def test_registry_lists_detection_order() -> None:
    assert list(ENVIRONMENTS) == ["torchelastic", "slurm", "lsf", "kubeflow", "mpi", "lightning"]
    assert LocalEnvironment is LightningEnvironment


def test_local_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    env = LightningEnvironment()
    assert env.main_address == "127.0.0.1"
    port = env.main_port
    assert 0 < port < 65536 and env.main_port == port  # picked once
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (1, 0, 0, 0)
    assert env.creates_processes_externally is False
    env.set_world_size(4)
    env.set_global_rank(2)
    assert (env.world_size(), env.global_rank()) == (4, 2)
    with pytest.raises(ClusterEnvironmentError, match="MASTER_PORT"):
        _rank_two_port()
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(ClusterEnvironmentError, match="MASTER_ADDR"):
        _ = env.main_address


def _rank_two_port() -> int:
    env = LightningEnvironment()
    env.set_world_size(4)
    env.set_global_rank(2)
    return env.main_port


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_local_environment_rejects_bad_world_size(bad: object) -> None:
    with pytest.raises(ClusterEnvironmentError, match="world size"):
        LightningEnvironment().set_world_size(bad)  # type: ignore[arg-type]


def test_bad_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**SLURM, "SLURM_PROCID": "five"})
    with pytest.raises(ClusterEnvironmentError, match="SLURM_PROCID='five'"):
        SLURMEnvironment().global_rank()
    _set(monkeypatch, {**TORCHRUN})
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ClusterEnvironmentError, match="MASTER_ADDR"):
        _ = TorchElasticEnvironment().main_address


def test_external_environment_keeps_launcher_values(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, TORCHRUN)
    env = TorchElasticEnvironment()
    with pytest.warns(UserWarning, match="keeping 4"):
        env.set_world_size(2)
    env.set_global_rank(3)  # agrees: silent
    assert env.world_size() == 4


class MyCluster(ClusterEnvironment):
    """The spec's custom cluster: only these three are overridden."""

    @property
    def main_address(self) -> str:
        return "10.0.0.1"

    @property
    def main_port(self) -> int:
        return 12345

    def world_size(self) -> int:
        return 8


def test_custom_cluster_defaults_from_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = MyCluster()
    assert (env.global_rank(), env.local_rank(), env.node_rank()) == (0, 0, 0)
    assert env.creates_processes_externally is False
    assert MyCluster.detect() is False
    _set(monkeypatch, {"RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "2"})
    assert (env.global_rank(), env.local_rank(), env.node_rank()) == (5, 1, 2)
    assert env.creates_processes_externally is True
    env.set_global_rank(6)
    assert env.global_rank() == 6
    assert (env.main_address, env.main_port, env.world_size()) == ("10.0.0.1", 12345, 8)
    env.teardown()


def test_incomplete_custom_cluster_cannot_instantiate() -> None:
    class NoPort(ClusterEnvironment):
        @property
        def main_address(self) -> str:
            return "x"

        def world_size(self) -> int:
            return 1

    with pytest.raises(TypeError, match="main_port"):
        NoPort()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node[001-003,7],other", ["node001", "node002", "node003", "node7", "other"]),
        ("single", ["single"]),
        ("a1,a2", ["a1", "a2"]),
        ("gpu-[08-10]", ["gpu-08", "gpu-09", "gpu-10"]),
        ("r[1-2]n[3,5]", ["r1n3", "r1n5", "r2n3", "r2n5"]),
        ("", []),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["node[1-", "node[5-3]", "node[a-b]"])
def test_expand_hostlist_rejects_malformed(hostlist: str) -> None:
    with pytest.raises(ClusterEnvironmentError, match="SLURM host list"):
        expand_hostlist(hostlist)
