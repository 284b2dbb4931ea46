"""The built-in cluster environments, their registry and detection."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from lite_collectives._environment import (
    ClusterEnvironment,
    ExternalEnvironment,
    check_rank,
    check_world_size,
    env_int,
    env_str,
)
from lite_collectives._errors import ClusterEnvironmentError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _port_from_job_id(job_id: str, default: int) -> int:
    """10000 + the last four digits of a scheduler job id, so every process of a job agrees."""
    digits = re.sub(r"\D", "", job_id)
    return 10000 + int(digits[-4:]) if digits else default


def _master_port_or(default: int) -> int:
    return env_int("MASTER_PORT", default) if "MASTER_PORT" in os.environ else default


class LightningEnvironment(ClusterEnvironment):
    """The local environment: Lite starts the processes itself on this machine (or on each node).

    ``MASTER_ADDR`` defaults to ``127.0.0.1``; ``MASTER_PORT`` defaults to a free port picked
    once per instance on rank 0 (rank > 0 must be told the port: it cannot guess it).
    World size and global rank are the values set, else ``WORLD_SIZE`` / ``RANK``, else 1 / 0.
    Processes count as launched externally only when ``LOCAL_RANK`` is already set (a process
    that Lite's own launcher started), so a plain ``python train.py`` reports ``False``.
    """

    def __init__(self) -> None:
        self._main_port: int | None = None

    @property
    def main_address(self) -> str:
        address = os.environ.get("MASTER_ADDR", "").strip()
        if address:
            return address
        if self.node_rank() > 0:
            raise ClusterEnvironmentError(
                f"node {self.node_rank()} cannot guess the address of node 0: MASTER_ADDR is not set; "
                "export MASTER_ADDR=<host of node 0> on every node."
            )
        return "127.0.0.1"

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return env_int("MASTER_PORT")
        if self._main_port is None:
            if self.global_rank() > 0 and self.world_size() > 1:
                raise ClusterEnvironmentError(
                    f"rank {self.global_rank()} of {self.world_size()} cannot guess the port rank 0 "
                    "picked: MASTER_PORT is not set; export MASTER_PORT=<port> in every process."
                )
            self._main_port = _free_port()
        return self._main_port

    @classmethod
    def detect(cls) -> bool:
        return True

    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return check_world_size(env_int("WORLD_SIZE", 1))


LocalEnvironment = LightningEnvironment


class TorchElasticEnvironment(ExternalEnvironment):
    """Processes started by ``torchrun`` / ``python -m torch.distributed.run`` (TorchElastic).

    Detected by ``TORCHELASTIC_RUN_ID`` or by the full set ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, ``GROUP_RANK``.
    """

    _REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")

    @property
    def main_address(self) -> str:
        return env_str("MASTER_ADDR", owner="TorchElasticEnvironment")

    @property
    def main_port(self) -> int:
        return env_int("MASTER_PORT", owner="TorchElasticEnvironment")

    @classmethod
    def detect(cls) -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ or all(v in os.environ for v in cls._REQUIRED)

    def world_size(self) -> int:
        return check_world_size(env_int("WORLD_SIZE", owner="TorchElasticEnvironment"))

    def global_rank(self) -> int:
        return check_rank(env_int("RANK", owner="TorchElasticEnvironment"))

    def local_rank(self) -> int:
        return check_rank(env_int("LOCAL_RANK", owner="TorchElasticEnvironment"))

    def node_rank(self) -> int:
        return check_rank(env_int("GROUP_RANK", 0))


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM host list: ``"node[001-003,7],other"`` -> node001, node002, node003, node7, other.

    Zero padding of a range is kept; several bracket groups in one name multiply out.
    """
    hosts: list[str] = []
    for part in _split_top_level(hostlist.strip()):
        hosts.extend(_expand_one(part))
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ClusterEnvironmentError(f"malformed SLURM host list {text!r}: unbalanced brackets.")
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _expand_one(name: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", name)
    if match is None:
        return [name]
    prefix, suffix = name[: match.start()], name[match.end() :]
    values: list[str] = []
    for item in match.group(1).split(","):
        item = item.strip()
        if "-" in item:
            low, high = item.split("-", 1)
            if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
                raise ClusterEnvironmentError(f"malformed range {item!r} in SLURM host list {name!r}.")
            values.extend(str(i).zfill(len(low)) for i in range(int(low), int(high) + 1))
        elif item:
            values.append(item)
    return [prefix + value + rest for value in values for rest in _expand_one(suffix)]


class SLURMEnvironment(ExternalEnvironment):
    """Processes started by ``srun`` inside a SLURM allocation.

    Ranks come from ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``.
    The main address is ``MASTER_ADDR`` if set, else the first host of ``SLURM_NODELIST``
    (``SLURM_JOB_NODELIST``); the main port is ``MASTER_PORT`` if set, else 10000 plus the
    last four digits of ``SLURM_JOB_ID``. Not detected in an interactive allocation
    (``SLURM_JOB_NAME`` is ``bash`` or ``interactive``), where Lite launches the processes.
    """

    DEFAULT_PORT = 12910

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR", "").strip():
            return os.environ["MASTER_ADDR"].strip()
        nodelist = os.environ.get("SLURM_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
        hosts = expand_hostlist(nodelist)
        return hosts[0] if hosts else "127.0.0.1"

    @property
    def main_port(self) -> int:
        return _master_port_or(_port_from_job_id(os.environ.get("SLURM_JOB_ID", ""), self.DEFAULT_PORT))

    @classmethod
    def detect(cls) -> bool:
        interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
        return "SLURM_NTASKS" in os.environ and not interactive

    @staticmethod
    def job_id() -> int | None:
        """The SLURM job id, or ``None`` outside a job."""
        raw = os.environ.get("SLURM_JOB_ID", "")
        return int(raw) if raw.isdigit() else None

    def world_size(self) -> int:
        return check_world_size(env_int("SLURM_NTASKS", owner="SLURMEnvironment"))

    def global_rank(self) -> int:
        return check_rank(env_int("SLURM_PROCID", owner="SLURMEnvironment"))

    def local_rank(self) -> int:
        return check_rank(env_int("SLURM_LOCALID", owner="SLURMEnvironment"))

    def node_rank(self) -> int:
        return check_rank(env_int("SLURM_NODEID", owner="SLURMEnvironment"))


class LSFEnvironment(ExternalEnvironment):
    """Processes started by ``jsrun`` in an IBM Spectrum LSF job (e.g. Summit).

    Ranks come from ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK``, ``JSM_NAMESPACE_LOCAL_RANK``.
    The hosts come from ``LSB_MCPU_HOSTS`` ("host slots host slots ...") or ``LSB_HOSTS``
    ("host host ..."); the first entry is the launch (batch) node, so when other hosts follow,
    it is skipped. The main address is ``MASTER_ADDR`` or the first compute host; the main port
    is ``MASTER_PORT`` or 10000 plus the last four digits of ``LSB_JOBID``. The node rank is the
    index of this machine's host name among the compute hosts.
    """

    DEFAULT_PORT = 12910

    @staticmethod
    def hosts() -> list[str]:
        """The compute hosts of the job, in order, without duplicates."""
        if os.environ.get("LSB_MCPU_HOSTS", "").strip():
            entries = os.environ["LSB_MCPU_HOSTS"].split()[::2]
        elif os.environ.get("LSB_HOSTS", "").strip():
            entries = os.environ["LSB_HOSTS"].split()
        else:
            raise ClusterEnvironmentError(
                "LSFEnvironment needs LSB_MCPU_HOSTS or LSB_HOSTS, and neither is set; run inside an LSF job."
            )
        unique = list(dict.fromkeys(entries))
        return unique[1:] if len(unique) > 1 else unique

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR", "").strip():
            return os.environ["MASTER_ADDR"].strip()
        return self.hosts()[0]

    @property
    def main_port(self) -> int:
        return _master_port_or(_port_from_job_id(os.environ.get("LSB_JOBID", ""), self.DEFAULT_PORT))

    @classmethod
    def detect(cls) -> bool:
        required = ("LSB_JOBID", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK")
        has_hosts = "LSB_HOSTS" in os.environ or "LSB_MCPU_HOSTS" in os.environ
        return has_hosts and all(v in os.environ for v in required)

    def world_size(self) -> int:
        return check_world_size(env_int("JSM_NAMESPACE_SIZE", owner="LSFEnvironment"))

    def global_rank(self) -> int:
        return check_rank(env_int("JSM_NAMESPACE_RANK", owner="LSFEnvironment"))

    def local_rank(self) -> int:
        return check_rank(env_int("JSM_NAMESPACE_LOCAL_RANK", owner="LSFEnvironment"))

    def node_rank(self) -> int:
        hosts = self.hosts()
        if len(hosts) == 1:
            return 0
        here = socket.gethostname()
        for name in (here, here.split(".")[0]):
            if name in hosts:
                return hosts.index(name)
        raise ClusterEnvironmentError(
            f"this machine's host name {here!r} is not among the LSF compute hosts {hosts}; "
            "export NODE_RANK or check LSB_MCPU_HOSTS / LSB_HOSTS."
        )


class KubeflowEnvironment(ExternalEnvironment):
    """A Kubeflow ``PyTorchJob``: one process per pod, ranks from ``WORLD_SIZE`` and ``RANK``.

    Detected by ``KUBERNETES_PORT`` together with ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``
    and ``RANK``. The local rank is 0 and the node rank equals the global rank.
    """

    @property
    def main_address(self) -> str:
        return env_str("MASTER_ADDR", owner="KubeflowEnvironment")

    @property
    def main_port(self) -> int:
        return env_int("MASTER_PORT", owner="KubeflowEnvironment")

    @classmethod
    def detect(cls) -> bool:
        required = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
        return all(v in os.environ for v in required)

    def world_size(self) -> int:
        return check_world_size(env_int("WORLD_SIZE", owner="KubeflowEnvironment"))

    def global_rank(self) -> int:
        return check_rank(env_int("RANK", owner="KubeflowEnvironment"))

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()


class MPIEnvironment(ExternalEnvironment):
    """Processes started by ``mpirun`` / ``mpiexec`` (Open MPI, MPICH, Intel MPI).

    Ranks come from ``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE`` /
    ``OMPI_COMM_WORLD_LOCAL_RANK`` or ``PMI_RANK`` / ``PMI_SIZE`` / ``MPI_LOCALRANKID``.
    The main address and port are ``MASTER_ADDR`` / ``MASTER_PORT`` when set. Otherwise, if
    ``mpi4py`` is installed (it is optional, never required), rank 0's host name and a free port
    are broadcast over MPI; without it a single-node job uses ``127.0.0.1`` and the port must be
    exported.
    """

    def __init__(self) -> None:
        self._shared: tuple[str, int] | None = None

    @classmethod
    def detect(cls) -> bool:
        ompi = "OMPI_COMM_WORLD_RANK" in os.environ and "OMPI_COMM_WORLD_SIZE" in os.environ
        pmi = "PMI_RANK" in os.environ and "PMI_SIZE" in os.environ
        return ompi or pmi

    def world_size(self) -> int:
        name = "OMPI_COMM_WORLD_SIZE" if "OMPI_COMM_WORLD_SIZE" in os.environ else "PMI_SIZE"
        return check_world_size(env_int(name, owner="MPIEnvironment"))

    def global_rank(self) -> int:
        name = "OMPI_COMM_WORLD_RANK" if "OMPI_COMM_WORLD_RANK" in os.environ else "PMI_RANK"
        return check_rank(env_int(name, owner="MPIEnvironment"))

    def local_rank(self) -> int:
        for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"):
            if name in os.environ:
                return check_rank(env_int(name))
        return 0

    def _local_size(self) -> int | None:
        for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"):
            if name in os.environ:
                return check_world_size(env_int(name))
        return None

    def node_rank(self) -> int:
        local_size = self._local_size()
        return self.global_rank() // local_size if local_size else 0

    def _broadcast_from_rank_zero(self) -> tuple[str, int] | None:
        """Rank 0's host name and a free port on it, shared over MPI when mpi4py is installed."""
        if self._shared is None:
            try:
                from mpi4py import MPI  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                return None
            comm: Any = MPI.COMM_WORLD
            mine = (socket.gethostname(), _free_port()) if comm.Get_rank() == 0 else None
            self._shared = comm.bcast(mine, root=0)
        return self._shared

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR", "").strip():
            return os.environ["MASTER_ADDR"].strip()
        shared = self._broadcast_from_rank_zero()
        if shared is not None:
            return shared[0]
        if self._local_size() == self.world_size():
            return "127.0.0.1"
        raise ClusterEnvironmentError(
            "MPIEnvironment cannot find rank 0's host: MASTER_ADDR is not set and mpi4py is not "
            "installed; export MASTER_ADDR (e.g. mpirun -x MASTER_ADDR=<host>) or pip install mpi4py."
        )

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return env_int("MASTER_PORT")
        shared = self._broadcast_from_rank_zero()
        if shared is not None:
            return shared[1]
        raise ClusterEnvironmentError(
            "MPIEnvironment cannot agree on a port: MASTER_PORT is not set and mpi4py is not "
            "installed; export MASTER_PORT (e.g. mpirun -x MASTER_PORT=29500) or pip install mpi4py."
        )


ENVIRONMENTS: Mapping[str, type[ClusterEnvironment]] = MappingProxyType(
    {
        # Detection order: the most specific launcher first, the local fallback last.
        "torchelastic": TorchElasticEnvironment,
        "slurm": SLURMEnvironment,
        "lsf": LSFEnvironment,
        "kubeflow": KubeflowEnvironment,
        "mpi": MPIEnvironment,
        "lightning": LightningEnvironment,
    }
)
"""Name -> cluster environment class, in the order [`detect_environment`][lite_collectives.detect_environment] tries them."""


def detect_environment() -> ClusterEnvironment:
    """Return the environment this process runs under, checking torchelastic, slurm, lsf,
    kubeflow and mpi in that order, else a [`LightningEnvironment`][lite_collectives.LightningEnvironment].

    Examples:
        >>> type(detect_environment()).__name__  # doctest: +SKIP
        'LightningEnvironment'
    """
    for cls in ENVIRONMENTS.values():
        if cls.detect():
            return cls()
    return LightningEnvironment()
