"""``LightningLite``: scale a plain PyTorch loop to any device, strategy and precision.

Drop-in for ``pytorch_lightning.lite.LightningLite``: subclass it, put the loop in ``run``,
call ``setup`` / ``setup_dataloaders`` / ``backward``, and instantiate it with the flags.
"""

from __future__ import annotations

import atexit
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar, overload

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

import lite_collectives
from lite_data import (
    DeviceDataLoader,
    distributed_dataloader,
    has_iterable_dataset,
    record_dataloader_arguments,
    worker_init_function,
)
from lite_facade._build import build_strategy, check_timeout
from lite_facade._cli import effective_flags
from lite_facade._lite_checkpoints import CheckpointMethods
from lite_facade._lite_collectives import CollectiveMethods
from lite_facade._lite_logging import LoggingMethods, check_loggers
from lite_facade._lite_step import StepMethods
from lite_facade._rank_zero import rank_zero_warn, set_rank
from lite_facade._resolve import Inventory, LiteConfigurationError, Plan, resolve_plan
from lite_facade._setup_checks import (
    SkipInitialisation,
    check_materialisable,
    check_optimizers,
    check_setup_arguments,
)
from lite_facade._types import AcceleratorName, PrecisionName, StrategyName
from lite_facade._wrappers import _LiteModule, _LiteOptimizer
from lite_precision import PrecisionError
from lite_strategies import Strategy, StrategyError, unwrap_module

__all__ = ["LightningLite"]

_M = TypeVar("_M", bound=nn.Module)
_O = TypeVar("_O", bound=Optimizer)
_O2 = TypeVar("_O2", bound=Optimizer)


class LightningLite(StepMethods, CollectiveMethods, LoggingMethods, CheckpointMethods, ABC):
    """Put your training loop in ``run``; ``LightningLite`` takes care of devices, processes and precision.

    Args:
        accelerator: ``"cpu"``, ``"gpu"``/``"cuda"``, ``"tpu"``/``"xla"``, ``"mps"`` or ``"auto"``.
            ``None`` means the CPU, unless ``gpus`` or ``tpu_cores`` say otherwise.
        strategy: a strategy name (``"dp"``, ``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``, ``"deepspeed"``,
            ``"ddp_sharded"``, ``"fsdp"``, ...) or a strategy object such as ``DeepSpeedPlugin(stage=2)``.
        devices: how many devices (an int; on the CPU, how many processes), which ones (a list or
            ``"1, 4"``), all of them (``-1``) or ``"auto"``.
        num_nodes: how many machines take part.
        precision: ``64``, ``32``, ``16``, ``"bf16"`` or a current name such as ``"bf16-mixed"``.
        plugins: a cluster environment, a precision plugin or a checkpoint IO (one of each at most).
        gpus: shorthand for ``devices=gpus, accelerator="gpu"``.
        tpu_cores: shorthand for ``devices=tpu_cores, accelerator="tpu"``.
        loggers: one logger or a list of them for [`log`][lite_facade.LightningLite.log] / [`log_dict`][lite_facade.LightningLite.log_dict]
            ([`CSVLogger`][lite_facade.CSVLogger], [`TensorBoardLogger`][lite_facade.TensorBoardLogger], or any
            object with ``log_metrics(metrics, step)``).
        timeout: how long a collective (and the start of the process group) may wait for the other
            processes, in seconds or as a ``timedelta``; ``None`` keeps the strategy's default of 30
            minutes, long enough for a slow first step or a checkpoint written by one rank. A wait that
            runs long is reported well before (see the lite-collectives page); ignored by strategies
            that run in one process.

    The flags left at their defaults take the values of ``lite run`` (the ``LITE_*`` environment
    variables; see the launching page).

    Raises:
        LiteConfigurationError: at construction, for every flag that cannot work here, all at once.

    Without ``run()`` (a framework embedding the facade): ``setup_dataloaders`` works with every
    strategy; ``setup``, the collectives, ``save`` and ``load`` work in one process and under an
    external launcher (torchrun, srun, mpirun), where the first of them sets the environment up.
    With a strategy that starts its own processes they raise a ``RuntimeError`` outside ``run()``.
    """

    def __init__(
        self,
        accelerator: AcceleratorName | None = None,
        strategy: StrategyName | Strategy | None = None,
        devices: int | str | Sequence[int] | None = None,
        num_nodes: int = 1,
        precision: PrecisionName = 32,
        plugins: Any = None,
        gpus: int | str | Sequence[int] | None = None,
        tpu_cores: int | str | Sequence[int] | None = None,
        loggers: Any = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        check_timeout(timeout)
        # Flags left at their defaults take the values `lite run` set (LITE_* environment variables).
        flags = effective_flags(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
        )
        accelerator, strategy, devices = flags["accelerator"], flags["strategy"], flags["devices"]
        num_nodes, precision = flags["num_nodes"], flags["precision"]
        self._plan: Plan = resolve_plan(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            plugins=plugins,
            gpus=gpus,
            tpu_cores=tpu_cores,
            inventory=Inventory.detect(),
        )
        for message in self._plan.warnings:  # once, on global rank 0 (not once per process)
            rank_zero_warn(message, UserWarning, stacklevel=2)
        try:
            self._strategy = build_strategy(self._plan, timeout=timeout)
        except (StrategyError, PrecisionError) as err:  # what only building the strategy can tell
            plan = self._plan
            raise LiteConfigurationError(
                f"LightningLite(accelerator={plan.accelerator!r}, strategy={plan.strategy!r}, "
                f"devices={plan.num_devices}, precision={plan.precision!r}) cannot run here:\n  - {err}"
            ) from err
        self._precision = self._strategy.precision
        self._plain_backward = self._strategy.plain_backward_and_step
        self._launched = False
        self._environment_ready = False
        self._models: list[nn.Module] = []
        self._loggers = check_loggers(loggers)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_lite_launches", False):
            cls.run = _launching(run)  # type: ignore[method-assign]

    @abstractmethod
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Your training (or inference) loop. Calling it launches the processes the strategy needs."""

    # -- the run machinery ---------------------------------------------------------------------------

    def _run_with_environment(self, *args: Any, **kwargs: Any) -> Any:
        """Runs in every process (after the launcher set the strategy's environment up)."""
        self._environment_ready = True
        self._launched = True
        set_rank(self.global_rank)  # the rank-zero helpers (rank_zero_only, ...) follow this process's rank
        try:
            # With `_launched` set, the launching wrapper of `run` calls the user's body directly.
            # DataLoader subclasses created in the body remember their arguments (re-created later
            # with a distributed sampler); the classes are restored when the body ends.
            with record_dataloader_arguments():
                return self.run(*args, **kwargs)
        finally:
            self._launched = False
            self._finalize_loggers()
            set_rank(None)  # back to the launcher's environment variables for code after run()

    def _launch(self, *args: Any, **kwargs: Any) -> Any:
        launcher = self._strategy.launcher
        if launcher is None:
            self._ensure_environment()
            return self._run_with_environment(*args, **kwargs)
        if (
            self._strategy.cluster_environment.creates_processes_externally
            and not lite_collectives.is_initialized()
        ):
            # Under torchrun / `lite run` (srun, mpirun): the process group this run creates is
            # otherwise torn down during interpreter shutdown, which can abort the process.
            _leave_process_group_at_exit()
        return launcher.launch(self._run_with_environment, *args, **kwargs)

    def _ensure_environment(self, what: str = "this call") -> None:
        """Set the strategy's environment up on first use: in ``run``, in one process, or under an external launcher."""
        if self._environment_ready:
            return
        strategy = self._strategy
        if (
            strategy.launcher is not None
            and not self._launched
            and not strategy.cluster_environment.creates_processes_externally
        ):
            raise RuntimeError(
                f"{what}: the strategy {self._plan.strategy!r} runs your code in several processes, so this can "
                "only be called inside `run()`. Move the call into your `run` method and call `run()`, or start "
                "the processes yourself (torchrun, srun, mpirun) so that this process is one of them."
            )
        had_group = lite_collectives.is_initialized()
        strategy.setup_environment()
        self._environment_ready = True
        if not self._launched and not had_group and lite_collectives.is_initialized():
            # Embedded use (no run()): the process group this call created would otherwise be
            # torn down during interpreter shutdown, after or while the set-up DDP modules are
            # freed, which can abort the process. Leave it while the interpreter is still whole.
            _leave_process_group_at_exit()

    # -- properties ------------------------------------------------------------------------------------

    @property
    def _models_setup(self) -> int:
        """How many models ``setup`` has set up (the seed's private counter)."""
        return len(self._models)

    @property
    def _precision_plugin(self) -> Any:
        """The precision plugin (the seed's private name for it, kept for code that reads it)."""
        return self._precision

    @_precision_plugin.setter
    def _precision_plugin(self, plugin: Any) -> None:
        # Replace it where backward and steps go through (optimizers set up before keep the
        # step path chosen then), and re-decide the backward fast path.
        self._strategy.precision = plugin
        self._precision = self._strategy.precision
        self._plain_backward = self._strategy.plain_backward_and_step

    @property
    def plan(self) -> Plan:
        """What the flags resolved to: ``plan.strategy``, ``plan.accelerator``, ``plan.devices``, ``plan.precision``, ..."""
        return self._plan

    @property
    def device(self) -> torch.device:
        """The device this process runs on: where ``setup`` puts models and data."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        """The index of this process among all processes, across devices and nodes."""
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        """The index of this process among the processes on this node."""
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        """The index of this node."""
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        """How many processes run, across all devices and nodes."""
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process with global rank 0."""
        return self._strategy.is_global_zero

    # -- setup ---------------------------------------------------------------------------------------

    # Typed as the model's and the optimizers' own classes: the wrappers forward attribute access to
    # the originals, and a set-up optimizer is an instance of its original's class.
    @overload
    def setup(self, model: _M, *, move_to_device: bool = True) -> _M: ...

    @overload
    def setup(self, model: _M, optimizer: _O, /, *, move_to_device: bool = True) -> tuple[_M, _O]: ...

    @overload
    def setup(
        self, model: _M, optimizer: _O, optimizer2: _O2, /, *, move_to_device: bool = True
    ) -> tuple[_M, _O, _O2]: ...

    @overload
    def setup(
        self, model: nn.Module, *optimizers: Optimizer, move_to_device: bool = True
    ) -> tuple[Any, ...]: ...

    def setup(self, model: nn.Module, *optimizers: Optimizer, move_to_device: bool = True) -> Any:
        """Set a model and its optimizers up for the strategy, the device and the precision.

        Returns the wrapped model alone when no optimizer is given, else ``(model, *optimizers)``.
        The wrappers behave like the originals, which stay reachable as ``.module`` / ``.optimizer``;
        each set-up optimizer is an instance of its original's class.

        Raises:
            ValueError: an object was set up already, or an optimizer holds parameters that are not
                the model's (named by their place in ``param_groups``).
        """
        check_setup_arguments(model, optimizers)
        if move_to_device:  # False: the user places the model, wherever that is
            check_materialisable(model, self._strategy.strategy_name, "setup()")
        self._ensure_environment("setup()")
        module, opts = self._strategy.setup_module_and_optimizers(
            model, list(optimizers), move_to_device=move_to_device
        )
        # A torch.compile-d model runs compiled; its state dict keys are those of the module it compiled.
        wrapped = _LiteModule(module, self._precision, original_module=unwrap_module(model))
        self._models.append(wrapped)
        if not optimizers:
            return wrapped
        return (
            wrapped,
            *(_LiteOptimizer(opt, self._strategy, original) for opt, original in zip(opts, optimizers)),
        )

    def setup_module(self, model: _M, move_to_device: bool = True) -> _M:
        """Set a model up alone (its optimizers, if any, later with [`setup_optimizers`][lite_facade.LightningLite.setup_optimizers]).

        Returns the wrapped model, as ``setup(model)`` does. With ``fsdp`` create the optimizers
        from the *returned* model's parameters (sharding replaces them), then call
        [`setup_optimizers`][lite_facade.LightningLite.setup_optimizers]. ``deepspeed`` and ``ddp_sharded`` set a model up together with
        its optimizer: use ``setup(model, optimizer)`` there.
        """
        check_setup_arguments(model, ())
        self._refuse_split_setup("setup_module()")
        if move_to_device:
            check_materialisable(model, self._strategy.strategy_name, "setup_module()")
        self._ensure_environment("setup_module()")
        module = self._strategy.setup_module(model, move_to_device=move_to_device)
        wrapped = _LiteModule(module, self._precision, original_module=model)
        self._models.append(wrapped)
        return wrapped  # type: ignore[return-value]  # the wrapper forwards to the model (see setup)

    @overload
    def setup_optimizers(self, optimizer: _O, /) -> _O: ...

    @overload
    def setup_optimizers(
        self, optimizer: _O, optimizer2: _O2, /, *optimizers: Optimizer
    ) -> tuple[Any, ...]: ...

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Set optimizers up for the strategy and the precision (after [`setup_module`][lite_facade.LightningLite.setup_module]).

        Returns the wrapped optimizer for one argument, else a tuple in the same order. Each
        behaves like its original (reachable as ``.optimizer``) and steps through the strategy
        and the precision (e.g. the loss scaler of ``16-mixed``). ``deepspeed`` and
        ``ddp_sharded`` set a model up together with its optimizer: use ``setup(model, optimizer)``.
        """
        if not optimizers:
            raise ValueError(
                "setup_optimizers() needs at least one optimizer: setup_optimizers(optimizer, ...)"
            )
        check_optimizers(optimizers, "setup_optimizers()")
        self._refuse_split_setup("setup_optimizers()")
        self._ensure_environment("setup_optimizers()")
        wrapped = tuple(_LiteOptimizer(opt, self._strategy, opt) for opt in optimizers)
        return wrapped[0] if len(wrapped) == 1 else wrapped

    def _refuse_split_setup(self, what: str) -> None:
        name = self._strategy.strategy_name
        if name.startswith(("deepspeed", "ddp_sharded")):
            raise RuntimeError(
                f"{what} is not supported with strategy={name!r}: it sets a model up together with its optimizer "
                "(DeepSpeed builds one engine from both; ddp_sharded shards the optimizer state and reduces each "
                "gradient to the rank that owns it). Use `model, optimizer = self.setup(model, optimizer)` instead."
            )

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Create models inside this block: on this process's device and in the precision's dtype.

        With ``fsdp`` the parameters are created on the meta device (no memory, no init) and
        materialised on the device at [`setup`][lite_facade.LightningLite.setup] / [`setup_module`][lite_facade.LightningLite.setup_module], shard by shard, by
        each submodule's ``reset_parameters()``. ``empty_init=True`` with other strategies skips
        the weights' initialisation (``torch.nn.init``) to save time, for a model whose weights
        you load from a checkpoint next; ``empty_init=False`` with ``fsdp`` creates the whole
        model on the device, initialised. ``None`` (the default) is ``True`` for ``fsdp`` and
        ``False`` otherwise. The dtype is the precision's for the ``*-true`` modes (float16,
        bfloat16, float64) and float32 for the mixed ones, which keep float32 weights.
        """
        sharded = self._strategy.strategy_name.startswith("fsdp")
        empty = sharded if empty_init is None else bool(empty_init)
        device = torch.device("meta") if sharded and empty else self.device
        with device, self._precision.module_init_context():
            if empty and not sharded:
                with SkipInitialisation():
                    yield
            else:
                yield

    @overload
    def setup_dataloaders(
        self,
        dataloader: DataLoader[Any],
        /,
        *,
        replace_sampler: bool = True,
        move_to_device: bool = True,
        even: bool = True,
    ) -> DeviceDataLoader: ...

    @overload
    def setup_dataloaders(
        self,
        dataloader: DataLoader[Any],
        dataloader2: DataLoader[Any],
        /,
        *dataloaders: DataLoader[Any],
        replace_sampler: bool = True,
        move_to_device: bool = True,
        even: bool = True,
    ) -> list[DeviceDataLoader]: ...

    def setup_dataloaders(
        self,
        *dataloaders: DataLoader,
        replace_sampler: bool = True,
        move_to_device: bool = True,
        even: bool = True,
    ) -> Any:
        """Set dataloaders up: a distributed sampler where the strategy needs one, batches on the device.

        Returns one loader for one argument, else a list in the same order. ``even=False`` gives
        each process a disjoint share with no padding (7 samples on 2 processes: 4 and 3, where
        the default pads to 4 and 4 by repeating one): for exact evaluation with
        [`gather_for_metrics`][lite_facade.LightningLite.gather_for_metrics]. Do not train on it: the processes would take different numbers
        of steps and DDP's gradient synchronization would wait for the missing one.
        """
        if not dataloaders:
            raise ValueError(
                "`setup_dataloaders` requires at least one dataloader: pass one or more DataLoaders."
            )
        # No process group is needed: the sampler's world size and rank come from the strategy
        # (and its cluster environment), so this also works before `run()`.
        wrapped = [self._setup_dataloader(dl, replace_sampler, move_to_device, even) for dl in dataloaders]
        return wrapped[0] if len(wrapped) == 1 else wrapped

    def _setup_dataloader(
        self, dataloader: DataLoader, replace_sampler: bool, move_to_device: bool, even: bool = True
    ) -> Any:
        if isinstance(dataloader, DeviceDataLoader):
            raise ValueError(
                "A dataloader should be passed only once to the `setup_dataloaders()` method: this one is already "
                "set up. Pass the original DataLoader (the wrapper's `.dataloader`) or use the set-up one as it is."
            )
        if not isinstance(dataloader, DataLoader):
            raise TypeError(
                f"Only PyTorch DataLoader are currently supported in `setup_dataloaders()`, got "
                f"{type(dataloader).__name__}: wrap it in a torch.utils.data.DataLoader."
            )
        sampler_kwargs = self._strategy.distributed_sampler_kwargs
        if replace_sampler and sampler_kwargs and not has_iterable_dataset(dataloader):
            dataloader = distributed_dataloader(dataloader, even=even, **sampler_kwargs)
        if dataloader.worker_init_fn is None and os.environ.get("PL_SEED_WORKERS") == "1":
            # After seed_everything(workers=True), as LightningLite: each worker of each rank its own stream.
            dataloader.worker_init_fn = functools.partial(worker_init_function, rank=self.global_rank)
        device = self.device if move_to_device else None
        return DeviceDataLoader(dataloader, device)

    # -- seeding -------------------------------------------------------------------------------------

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None) -> int:
        """Seed Python, NumPy and torch; dataloader workers too unless ``workers=False``."""
        from lite_data import seed_everything

        return seed_everything(seed, workers=True if workers is None else workers)


_exit_hook_registered = False


def _leave_process_group_at_exit() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(lite_collectives.destroy_process_group)


def _launching(run: Callable[..., Any]) -> Callable[..., Any]:
    """Make a subclass's ``run`` launch the strategy's processes when called from outside."""

    @functools.wraps(run)
    def launch_then_run(self: LightningLite, *args: Any, **kwargs: Any) -> Any:
        if self._launched:  # already inside the processes (e.g. super().run(...) from a subclass)
            return run(self, *args, **kwargs)
        return self._launch(*args, **kwargs)

    launch_then_run._lite_launches = True  # type: ignore[attr-defined]
    return launch_then_run
