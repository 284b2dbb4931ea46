"""ParallelStrategy: one process per device, joined by a process group, started by a launcher."""

from __future__ import annotations

import os
import weakref
from datetime import timedelta
from typing import Any, ClassVar

import torch
from torch import nn

import lite_collectives
from lite_strategies._errors import StrategyError
from lite_strategies._spec import START_METHODS
from lite_strategies._strategy import Strategy
from lite_strategies.launchers import Launcher, make_launcher
from lite_strategies.launchers._spawn import check_start_method


def _share_cpu_threads(device: torch.device, local_processes: int) -> None:
    """Give each of the CPU processes on this node its share of the cores.

    Without this, every process starts one intra-op thread per core, and N processes on N
    cores fight over them (a several-fold slowdown). A user's OMP_NUM_THREADS wins, as it
    does under torchrun, which sets it to 1 itself.
    """
    if device.type != "cpu" or local_processes <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


class ParallelStrategy(Strategy):
    """A strategy with one process per device, joined by a process group (lite_collectives).

    Ranks come from the cluster environment: ``global_rank = node_rank * devices + local_rank``
    unless an external launcher (torchrun, SLURM, MPI) assigned them.
    """

    strategy_name: ClassVar[str] = "ddp"
    accepted_kwargs: ClassVar[tuple[str, ...]] = ("process_group_backend", "timeout")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backend = self._backend_kwargs.pop("process_group_backend", None)
        if backend is not None and not isinstance(backend, str):
            raise StrategyError(
                f"process_group_backend must be a string like 'gloo' or 'nccl', got {backend!r}"
            )
        self._process_group_backend: str | None = backend
        given = self._backend_kwargs.pop("timeout", timedelta(minutes=30))
        timeout = given
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            try:
                timeout = timedelta(seconds=given)
            except (OverflowError, ValueError):  # inf, nan
                timeout = None
        if not isinstance(timeout, timedelta) or timeout.total_seconds() <= 0:
            raise StrategyError(
                f"timeout={given!r}: must be a positive number of seconds or a datetime.timedelta, e.g. "
                f"{type(self).__name__}(timeout=3600); the default is 30 minutes"
            )
        self._timeout = timeout
        self._owns_process_group = False
        # Wrappers this strategy built: destroying the process group under a live DDP module
        # can hang when the module is freed later, so teardown leaves the group then.
        self._wrapped: list[weakref.ref[nn.Module]] = []
        if self.start_method is not None:
            check_start_method(self.start_method)

    @property
    def start_method(self) -> str | None:
        """The multiprocessing start method ("spawn"/"fork") of a spawn/fork row; None for the script launcher.

        Read from [`launcher_kind`][lite_strategies.Strategy.launcher_kind] (the row), kept for code that read the old class attribute.
        """
        kind = self.launcher_kind
        return kind if kind in START_METHODS else None

    @property
    def num_processes(self) -> int:
        """Processes per node: one per device."""
        return len(self._devices)

    @property
    def world_size(self) -> int:
        """``num_nodes * devices``."""
        return self._num_nodes * self.num_processes

    @property
    def global_rank(self) -> int:
        """This process's rank in the job (from the cluster environment)."""
        return self.cluster_environment.global_rank()

    @property
    def local_rank(self) -> int:
        """This process's rank on its node (from the cluster environment)."""
        return self.cluster_environment.local_rank()

    @property
    def node_rank(self) -> int:
        """This node's rank (from the cluster environment, e.g. NODE_RANK)."""
        return self.cluster_environment.node_rank()

    @property
    def root_device(self) -> torch.device:
        """This process's device: ``devices[local_rank]``."""
        local_rank = self.local_rank
        if local_rank >= len(self._devices):
            raise StrategyError(
                f"local rank {local_rank} has no device: this node was given {len(self._devices)} device(s); "
                f"start at most that many processes per node"
            )
        return self._devices[local_rank]

    @property
    def launcher(self) -> Launcher | None:
        """The launcher of [`launcher_kind`][lite_strategies.Strategy.launcher_kind] (see `lite_strategies.launchers.make_launcher`)."""
        if self._launcher is None:
            self._launcher = make_launcher(self.launcher_kind or "script", self)
        return self._launcher

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._wrapped = []

    def setup_environment(self) -> None:
        """Set the ranks on the cluster environment, select the device and join the process group."""
        env = self.cluster_environment
        if env.creates_processes_externally:
            if env.world_size() != self.world_size:
                raise StrategyError(
                    f"{type(env).__name__} started {env.world_size()} processes in all, but this strategy "
                    f"expects num_nodes x devices = {self._num_nodes} x {self.num_processes} = {self.world_size}; "
                    f"pass devices and num_nodes that match the launcher"
                )
        else:
            env.set_world_size(self.world_size)
            env.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        super().setup_environment()
        _share_cpu_threads(self.root_device, self.num_processes)
        self._owns_process_group = not lite_collectives.is_initialized()
        lite_collectives.init_process_group(
            env,
            backend=self._process_group_backend,
            device_type=self.root_device.type,
            timeout=self._timeout,
        )

    def barrier(self, name: str | None = None) -> None:
        """Wait for every process (a no-op before the process group exists)."""
        if lite_collectives.is_initialized():
            lite_collectives.barrier()

    def setup_module(self, module: nn.Module, *, move_to_device: bool = True) -> nn.Module:
        """Convert, move and wrap the module (see [`Strategy.setup_module`][lite_strategies.Strategy.setup_module])."""
        wrapped = super().setup_module(module, move_to_device=move_to_device)
        if wrapped is not module:
            self._wrapped.append(weakref.ref(wrapped))
        return wrapped

    def teardown(self) -> None:
        """Destroy the process group this strategy created and tear the environment down.

        While a module wrapped by this strategy is still referenced, the process group is
        left to the end of the process: destroying it first can hang when the wrapper is freed.
        """
        live = any(ref() is not None for ref in self._wrapped)
        if self._owns_process_group and lite_collectives.is_initialized() and not live:
            lite_collectives.destroy_process_group()
            self._owns_process_group = False
        self.cluster_environment.teardown()
