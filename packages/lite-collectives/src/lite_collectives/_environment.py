"""The cluster-environment base class: who am I, how many are we, where do we meet."""

from __future__ import annotations

import abc
import os
import warnings

from lite_collectives._errors import ClusterEnvironmentError


def env_int(name: str, default: int | None = None, *, owner: str = "this environment") -> int:
    """Read the integer environment variable ``name``; ``default`` when unset (``None``: required)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ClusterEnvironmentError(
                f"{owner} needs the environment variable {name}, which is not set; "
                f"start the processes with the launcher that sets it, or export {name}."
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise ClusterEnvironmentError(
            f"the environment variable {name}={raw!r} is not an integer; {owner} reads it as one."
        ) from None


def env_str(name: str, *, owner: str = "this environment") -> str:
    """Read the required, non-empty environment variable ``name``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        raise ClusterEnvironmentError(
            f"{owner} needs the environment variable {name}, which is not set; "
            f"start the processes with the launcher that sets it, or export {name}."
        )
    return raw


def check_world_size(size: int) -> int:
    """Return ``size`` if it is a valid world size (an int >= 1), else raise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ClusterEnvironmentError(f"world size must be an integer >= 1, got {size!r}.")
    return size


def check_rank(rank: int) -> int:
    """Return ``rank`` if it is a valid rank (an int >= 0), else raise."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ClusterEnvironmentError(f"rank must be an integer >= 0, got {rank!r}.")
    return rank


class ClusterEnvironment(abc.ABC):
    """Where this process sits in a distributed job, read from a cluster's variables.

    A subclass must say where the processes meet ([`main_address`][lite_collectives.ClusterEnvironment.main_address], [`main_port`][lite_collectives.ClusterEnvironment.main_port])
    and how many there are ([`world_size`][lite_collectives.ClusterEnvironment.world_size]). Everything else defaults from the standard
    variables: ``RANK`` for the global rank, ``LOCAL_RANK``, ``NODE_RANK`` (or ``GROUP_RANK``),
    each ``0`` when unset; processes count as launched externally when ``LOCAL_RANK`` is set.
    That is enough for the spec's custom cluster (see the example). Subclasses need not call
    ``super().__init__()``.

    Examples:
        ```python
        class MyCluster(ClusterEnvironment):
            @property
            def main_address(self) -> str:
                return "10.0.0.1"

            @property
            def main_port(self) -> int:
                return 29500

            def world_size(self) -> int:
                return 8
        ```
    """

    # Class-level defaults so that a subclass with its own __init__ still works.
    _world_size: int | None = None
    _global_rank: int | None = None

    @property
    def creates_processes_externally(self) -> bool:
        """Whether a launcher outside Lite already started every process of the job."""
        return "LOCAL_RANK" in os.environ

    @property
    @abc.abstractmethod
    def main_address(self) -> str:
        """The host name or IP address of the rank-0 process, where the rendezvous happens."""

    @property
    @abc.abstractmethod
    def main_port(self) -> int:
        """The TCP port on [`main_address`][lite_collectives.ClusterEnvironment.main_address] where the rendezvous happens."""

    @classmethod
    def detect(cls) -> bool:
        """Whether the current process runs under this environment (a custom one: never)."""
        return False

    @abc.abstractmethod
    def world_size(self) -> int:
        """The number of processes in the job."""

    def set_world_size(self, size: int) -> None:
        """Record the number of processes (environments that read it from the cluster ignore it)."""
        self._world_size = check_world_size(size)

    def global_rank(self) -> int:
        """This process's rank among all processes: the value set, else ``RANK``, else 0."""
        if self._global_rank is not None:
            return self._global_rank
        return env_int("RANK", 0)

    def set_global_rank(self, rank: int) -> None:
        """Record this process's global rank (environments that read it from the cluster ignore it)."""
        self._global_rank = check_rank(rank)

    def local_rank(self) -> int:
        """This process's rank on its node: ``LOCAL_RANK``, else 0."""
        return env_int("LOCAL_RANK", 0)

    def node_rank(self) -> int:
        """The index of this process's node: ``NODE_RANK``, else ``GROUP_RANK``, else 0."""
        if "NODE_RANK" in os.environ:
            return env_int("NODE_RANK")
        return env_int("GROUP_RANK", 0)

    def teardown(self) -> None:
        """Undo what the environment set up (nothing by default)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExternalEnvironment(ClusterEnvironment):
    """Base of the environments whose launcher fixed ranks and world size: setting them is ignored."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def set_world_size(self, size: int) -> None:
        check_world_size(size)
        if size != self.world_size():
            warnings.warn(
                f"{type(self).__name__}: world size {size} requested, but the launcher started "
                f"{self.world_size()} processes; keeping {self.world_size()}.",
                stacklevel=2,
            )

    def set_global_rank(self, rank: int) -> None:
        check_rank(rank)
        if rank != self.global_rank():
            warnings.warn(
                f"{type(self).__name__}: global rank {rank} requested, but the launcher assigned "
                f"{self.global_rank()}; keeping {self.global_rank()}.",
                stacklevel=2,
            )
