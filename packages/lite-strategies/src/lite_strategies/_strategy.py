"""The Strategy base: how a module and its optimizers are placed, wrapped, stepped and saved.

A strategy is built in the main process (nothing touches a device or a process group in
``__init__``, so it is fork-safe and picklable), then its launcher starts the processes
and calls [`Strategy.setup_environment`][lite_strategies.Strategy.setup_environment] in each before the user's function runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from torch import nn

import lite_collectives
from lite_collectives import ClusterEnvironment
from lite_devices import get_accelerator, move_to_device
from lite_precision import Precision
from lite_strategies._checkpoint_io import CheckpointIO, TorchCheckpointIO
from lite_strategies._errors import StrategyError
from lite_strategies._registry import StrategySpec, get_strategy_spec
from lite_strategies._state import restore_state, saved_form, unwrap_module
from lite_strategies.launchers import Launcher

_PathLike = str | os.PathLike[str]


class Strategy:
    """Base of every strategy: single-process behaviour, collectives delegated to lite_collectives.

    Subclasses set ``strategy_name`` (their registry row, which gives the accepted
    accelerators) and override [`setup_module`][lite_strategies.Strategy.setup_module] (the wrap), and where a backend wraps
    the module and its optimizers together (DeepSpeed, fairscale, FSDP),
    [`setup_module_and_optimizers`][lite_strategies.Strategy.setup_module_and_optimizers].
    """

    strategy_name: ClassVar[str] = "single_device"
    #: Extra keyword arguments this strategy accepts (``**backend_kwargs``).
    accepted_kwargs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        accelerator: str = "cpu",
        devices: Sequence[torch.device | str] | None = None,
        num_nodes: int = 1,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        **backend_kwargs: Any,
    ) -> None:
        spec = get_strategy_spec(self.strategy_name)
        self._spec = spec
        self._accelerator = get_accelerator(accelerator).name
        if self._accelerator not in spec.accelerators:  # before the devices: they are checked against it
            raise StrategyError("; ".join(spec.problems(accelerator=self._accelerator, installed=())[:1]))
        self._devices = self._check_devices(devices)
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise StrategyError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
        self._num_nodes = num_nodes
        device_type = self._devices[0].type
        if precision is None:
            precision = spec.make_precision("32-true", device_type)
        elif precision.device_type != device_type:
            raise StrategyError(
                f"the precision plugin {precision!r} was built for device type {precision.device_type!r} but "
                f"the strategy runs on {device_type!r}; build it with get_precision(..., {device_type!r})"
            )
        problems = spec.problems(
            accelerator=self._accelerator,
            precision=precision.name,
            num_devices=len(self._devices),
            num_nodes=num_nodes,
            # the backend itself is checked where it is first needed (so the class builds without it)
            installed=None if spec.requires is None else (spec.requires,),
        )
        if problems:
            raise StrategyError("; ".join(problems))
        self._precision = precision
        self._cluster_environment = cluster_environment
        self._checkpoint_io = checkpoint_io if checkpoint_io is not None else TorchCheckpointIO()
        unknown = sorted(set(backend_kwargs) - set(self.accepted_kwargs))
        if unknown:
            accepted = ", ".join(self.accepted_kwargs) or "none"
            raise StrategyError(
                f"strategy {spec.name!r} got unknown keyword argument(s) {unknown}; accepted: {accepted}"
            )
        self._backend_kwargs = dict(backend_kwargs)
        self._given_backend_kwargs = dict(backend_kwargs)  # never mutated: see `configured`
        self._launcher: Launcher | None = None

    def _check_devices(self, devices: Sequence[torch.device | str] | None) -> tuple[torch.device, ...]:
        device_type = get_accelerator(self._accelerator).device_type
        if devices is None:
            return (torch.device("cpu") if device_type == "cpu" else torch.device(device_type, 0),)
        if isinstance(devices, (str, torch.device)) or not isinstance(devices, Sequence) or not devices:
            raise StrategyError(
                f"devices must be a non-empty sequence of torch.device (e.g. [torch.device('cpu')] * 2), "
                f"got {devices!r}"
            )
        parsed = tuple(torch.device(d) for d in devices)
        wrong = [str(d) for d in parsed if d.type != device_type]
        if wrong:
            raise StrategyError(
                f"devices {wrong} do not belong to accelerator {self._accelerator!r} "
                f"(device type {device_type!r})"
            )
        return parsed

    def __getstate__(self) -> dict[str, Any]:
        # A launcher holds live process handles; each process builds its own.
        state = self.__dict__.copy()
        state["_launcher"] = None
        state.pop("_wrapped", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(accelerator={self._accelerator!r}, devices={len(self._devices)}, "
            f"num_nodes={self._num_nodes}, precision={self._precision.name!r})"
        )

    # ------------------------------------------------------------------ properties
    @property
    def accelerator(self) -> str:
        """The canonical accelerator name ("cpu", "cuda", ...)."""
        return self._accelerator

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """The devices of this node (one per process for multi-process strategies)."""
        return self._devices

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return self._num_nodes

    @property
    def num_processes(self) -> int:
        """Processes per node: one for single-process strategies."""
        return 1

    @property
    def root_device(self) -> torch.device:
        """The device this process computes on."""
        return self._devices[0]

    @property
    def world_size(self) -> int:
        """Number of processes in the job."""
        return 1

    @property
    def global_rank(self) -> int:
        """This process's rank in the job."""
        return 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its node."""
        return 0

    @property
    def node_rank(self) -> int:
        """This node's rank."""
        return 0

    @property
    def is_global_zero(self) -> bool:
        """Whether this is global rank 0 (the one that writes checkpoints)."""
        return self.global_rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether several processes take part (data must be split between them)."""
        return self.world_size > 1

    @property
    def launcher(self) -> Launcher | None:
        """What starts the processes; None for strategies that run in the current process only."""
        return None

    @property
    def precision(self) -> Precision:
        """The precision plugin backward and optimizer steps go through.

        Settable: a new plugin must be built for the strategy's device type; optimizers set up
        before keep the step path chosen then.
        """
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        if not isinstance(precision, Precision):
            raise StrategyError(f"precision must be a lite_precision.Precision, got {precision!r}")
        if precision.device_type != self.root_device.type:
            raise StrategyError(
                f"the precision plugin {precision!r} was built for device type {precision.device_type!r} but "
                f"the strategy runs on {self.root_device.type!r}"
            )
        self._precision = precision

    @property
    def spec(self) -> StrategySpec:
        """The registry row this strategy was built from (its checks, launcher kind, ...)."""
        return self._spec

    @property
    def launcher_kind(self) -> str | None:
        """How this strategy starts processes, from its row: None, "script", "spawn", "fork" or "xla"."""
        return self._spec.launcher

    @classmethod
    def from_spec(cls, spec: StrategySpec, **settings: Any) -> Strategy:
        """Build ``cls`` as the row ``spec``: with the row's ``init_kwargs`` under ``settings``.

        The strategy takes the row's name, so several rows can share one class (``ddp``,
        ``ddp_spawn`` and ``ddp_fork`` are all [`DDPStrategy`][lite_strategies.DDPStrategy], differing in launcher kind).
        """
        strategy = cls.__new__(cls)
        # an instance attribute: this object's row, shadowing the class's default one
        vars(strategy)["strategy_name"] = spec.name
        strategy.__init__(**{**spec.init_kwargs, **settings})  # type: ignore[misc]
        return strategy

    @property
    def cluster_environment(self) -> ClusterEnvironment:
        """Where ranks, world size and the main address come from (detected if not given)."""
        if self._cluster_environment is None:
            self._cluster_environment = lite_collectives.detect_environment()
        return self._cluster_environment

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """How checkpoints are written and read."""
        return self._checkpoint_io

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``{"num_replicas", "rank"}`` for a DistributedSampler, or None when data need not be split."""
        if not self.is_distributed:
            return None
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ------------------------------------------------------------------ setup
    def setup_environment(self) -> None:
        """In each process, before user code: select the device (and join the process group)."""
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)

    def configured(self, **settings: Any) -> Strategy:
        """A new strategy of this class with ``settings`` and the backend keyword arguments this one got.

        ``settings`` are the constructor's common keywords (accelerator, devices, num_nodes,
        precision, cluster_environment, checkpoint_io): this is how a caller that resolved them
        (the facade) completes a strategy object the user built with backend options only, e.g.
        ``DDPStrategy(find_unused_parameters=True)``.
        """
        return type(self).from_spec(self._spec, **{**self._given_backend_kwargs, **settings})

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[torch.optim.Optimizer], *, move_to_device: bool = True
    ) -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        """Set up a module and its optimizers together; returns what to train with.

        The default wraps the module with [`setup_module`][lite_strategies.Strategy.setup_module] and keeps the optimizers: they
        hold the module's parameters, which conversion and moving keep (in place). Backends
        that replace the optimizers (DeepSpeed's engine, fairscale's OSS) or need them built
        after wrapping (FSDP) override this.
        """
        return self.setup_module(module, move_to_device=move_to_device), list(optimizers)

    def setup_module(self, module: nn.Module, *, move_to_device: bool = True) -> nn.Module:
        """Convert the module to the precision, move it to the root device and wrap it.

        The order matters: a wrapper like DDP registers its buckets on the parameters as
        they are, so the dtype and device must be final before wrapping.
        """
        module = self.precision.convert_module(module)
        if move_to_device:  # False: the caller placed the module itself
            module = self.module_to_device(module)
        return self._wrap_module(module)

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        return module

    def module_to_device(self, module: nn.Module) -> nn.Module:
        """Move the module's parameters and buffers to the root device (in place); returns it."""
        return module.to(self.root_device)

    def batch_to_device(self, batch: Any) -> Any:
        """Return ``batch`` (any collection) with its tensors on the root device."""
        return move_to_device(batch, self.root_device)

    # ------------------------------------------------------------------ training step
    @property
    def plain_backward_and_step(self) -> bool:
        """True when [`backward`][lite_strategies.Strategy.backward] and [`optimizer_step`][lite_strategies.Strategy.optimizer_step] add nothing to ``tensor.backward`` and
        ``optimizer.step`` (neither this strategy nor its precision changes them): a caller on the
        hot path may then call those directly. Strategies that drive the step themselves
        (e.g. through an engine) override a method and so read False.
        """
        return (
            type(self).backward is Strategy.backward
            and type(self).optimizer_step is Strategy.optimizer_step
            and self.precision.plain_backward_and_step
        )

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision plugin (which scales the loss for 16-mixed)."""
        self.precision.backward(tensor, *args, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """Step through the precision plugin (unscale, skip on inf); returns the step's value."""
        return self.precision.optimizer_step(optimizer, **kwargs)

    def no_backward_sync(self, module: nn.Module) -> AbstractContextManager[Any]:
        """A context in which backward does not synchronize gradients (a no-op here)."""
        return contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Rescale ``module``'s gradients so that their total norm is at most ``max_norm``.

        Scaled gradients (16-mixed) are unscaled first; there a non-finite norm is not an error,
        since the loss scaler skips that step. Returns the total norm before clipping.
        """
        self.precision.unscale_gradients(optimizer)
        parameters = [p for p in module.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(
            parameters,
            max_norm,
            norm_type=norm_type,
            error_if_nonfinite=error_if_nonfinite and not self.precision.uses_scaler,
        )

    def clip_gradients_value(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, clip_val: float
    ) -> None:
        """Clamp every gradient of ``module`` to ``[-clip_val, clip_val]`` (unscaled first under 16-mixed)."""
        self.precision.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_value_([p for p in module.parameters() if p.grad is not None], clip_val)

    # ------------------------------------------------------------------ collectives
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather ``data`` from every process (see lite_collectives.all_gather)."""
        return lite_collectives.all_gather(data, group=group, sync_grads=sync_grads)

    def all_reduce(self, data: Any, op: str = "mean", group: Any = None) -> Any:
        """Reduce ``data`` over every process with ``op`` (sum, mean, max, min, product)."""
        return lite_collectives.all_reduce(data, op=op, group=group)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` from rank ``src`` to every process; returns it everywhere."""
        return lite_collectives.broadcast(obj, src=src)

    def barrier(self, name: str | None = None) -> None:
        """Wait for every process (``name`` only labels the call); a no-op in one process."""
        if self.is_distributed:
            lite_collectives.barrier()

    # ------------------------------------------------------------------ checkpoints
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's full state dict with its original keys (no wrapper's ``module.`` prefix).

        Called on every rank (sharded strategies gather here, a collective).
        """
        return unwrap_module(module).state_dict()

    def get_optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state dict; called on every rank (sharded optimizers consolidate here)."""
        return optimizer.state_dict()

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> None:
        """Load a full state dict (original keys) into a module this strategy set up."""
        unwrap_module(module).load_state_dict(state_dict, strict=strict)

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
        """Load a full optimizer state dict into an optimizer this strategy set up."""
        optimizer.load_state_dict(state_dict)

    def save_checkpoint(self, path: _PathLike, state: Any) -> None:
        """Save ``state`` to ``path``: global rank 0 writes, atomically; every rank must call this.

        Modules and optimizers (what [`setup_module_and_optimizers`][lite_strategies.Strategy.setup_module_and_optimizers] returned), at the top
        level or inside dicts, lists and tuples, are saved as their full state dicts, other objects
        with ``state_dict``/``load_state_dict`` (an LR scheduler) as their ``state_dict()``. Sharded
        strategies override this to write one file per rank under ``path``.
        """
        converted = self._convert_state(state)  # on every rank: sharded states gather here
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(converted, path)
        self.barrier("save_checkpoint")

    def _convert_state(self, state: Any) -> Any:
        return saved_form(
            state,
            lambda module, _: self.get_module_state_dict(module),
            lambda optimizer, _: self.get_optimizer_state_dict(optimizer),
        )

    def load_checkpoint(
        self, path: _PathLike, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> Any:
        """Load a checkpoint on this rank with tensors on the root device.

        Without ``state``: return what was saved. With ``state`` (a dict of modules, optimizers,
        other stateful objects and plain values, keyed like the saved dict): load each module,
        optimizer and stateful object in place,
        replace each plain value in ``state`` by the saved one, and return the saved entries
        that ``state`` did not name. A key of ``state`` missing from the file raises
        [`CheckpointError`][lite_strategies.CheckpointError]. ``weights_only=False`` unpickles arbitrary objects: only for
        files you trust.
        """
        checkpoint = self.checkpoint_io.load_checkpoint(
            path, map_location=self.root_device, weights_only=weights_only
        )
        if state is None:
            return checkpoint
        return self._restore_state(path, checkpoint, state)

    def _restore_state(self, path: _PathLike, checkpoint: Any, state: dict[str, Any]) -> dict[str, Any]:
        return restore_state(
            path, checkpoint, state, self.load_module_state_dict, self.load_optimizer_state_dict
        )

    def teardown(self) -> None:
        """Release what [`setup_environment`][lite_strategies.Strategy.setup_environment] acquired."""
