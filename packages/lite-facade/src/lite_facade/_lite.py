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
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from torch import nn
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

import lite_collectives
from lite_data import (
    DeviceDataLoader,
    distributed_dataloader,
    has_iterable_dataset,
    record_dataloader_arguments,
    worker_init_function,
)
from lite_devices import move_to_device
from lite_facade._build import build_strategy
from lite_facade._cli import effective_flags
from lite_facade._logging import progress_bar
from lite_facade._rank_zero import rank_zero_warn, set_rank
from lite_facade._resolve import Inventory, LiteConfigurationError, Plan, resolve_plan
from lite_facade._types import AcceleratorName, PrecisionName, StrategyName
from lite_facade._wrappers import _LiteModule, _LiteOptimizer
from lite_precision import PrecisionError
from lite_strategies import Strategy, StrategyError, map_state, state_leaves, unwrap_module

__all__ = ["LightningLite"]

_M = TypeVar("_M", bound=nn.Module)
_O = TypeVar("_O", bound=Optimizer)
_O2 = TypeVar("_O2", bound=Optimizer)


class LightningLite(ABC):
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
        loggers: one logger or a list of them for :meth:`log` / :meth:`log_dict`
            (:class:`~lite_facade.CSVLogger`, :class:`~lite_facade.TensorBoardLogger`, or any
            object with ``log_metrics(metrics, step)``).

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
    ) -> None:
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
            self._strategy = build_strategy(self._plan)
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
        self._loggers = _check_loggers(loggers)

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
        self._check_setup_arguments(model, optimizers)
        if move_to_device:  # False: the user places the model, wherever that is
            _check_materialisable(model, self._strategy.strategy_name, "setup()")
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
        """Set a model up alone (its optimizers, if any, later with :meth:`setup_optimizers`).

        Returns the wrapped model, as ``setup(model)`` does. With ``fsdp`` create the optimizers
        from the *returned* model's parameters (sharding replaces them), then call
        :meth:`setup_optimizers`. ``deepspeed`` and ``ddp_sharded`` set a model up together with
        its optimizer: use ``setup(model, optimizer)`` there.
        """
        self._check_setup_arguments(model, ())
        self._refuse_split_setup("setup_module()")
        if move_to_device:
            _check_materialisable(model, self._strategy.strategy_name, "setup_module()")
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
        """Set optimizers up for the strategy and the precision (after :meth:`setup_module`).

        Returns the wrapped optimizer for one argument, else a tuple in the same order. Each
        behaves like its original (reachable as ``.optimizer``) and steps through the strategy
        and the precision (e.g. the loss scaler of ``16-mixed``). ``deepspeed`` and
        ``ddp_sharded`` set a model up together with its optimizer: use ``setup(model, optimizer)``.
        """
        if not optimizers:
            raise ValueError(
                "setup_optimizers() needs at least one optimizer: setup_optimizers(optimizer, ...)"
            )
        for opt in optimizers:
            if isinstance(opt, _LiteOptimizer):
                raise ValueError(
                    "An optimizer should be passed only once to `setup_optimizers()`: this one is already set up. "
                    "Pass the original optimizer (the wrapper's `.optimizer`)."
                )
            if not isinstance(opt, Optimizer):
                raise TypeError(
                    f"setup_optimizers() takes torch.optim.Optimizer objects, got {type(opt).__name__}."
                )
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
        materialised on the device at :meth:`setup` / :meth:`setup_module`, shard by shard, by
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
                with _SkipInitialisation():
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
        :meth:`gather_for_metrics`. Do not train on it: the processes would take different numbers
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

    def _check_setup_arguments(self, model: nn.Module, optimizers: Sequence[Optimizer]) -> None:
        if isinstance(model, _LiteModule):
            raise ValueError(
                "A model should be passed only once to the `setup()` method: this one is already set up. Pass the "
                "original model (the wrapper's `.module`) or use the set-up one as it is."
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"setup() takes a torch.nn.Module first, got {type(model).__name__}.")
        for opt in optimizers:
            if isinstance(opt, _LiteOptimizer):
                raise ValueError(
                    "An optimizer should be passed only once to the `setup()` method: this one is already set up. "
                    "Pass the original optimizer (the wrapper's `.optimizer`)."
                )
            if not isinstance(opt, Optimizer):
                raise TypeError(
                    f"setup() takes torch.optim.Optimizer objects after the model, got {type(opt).__name__}."
                )
        # An optimizer over parameters that are not the model's would train something else: the
        # model would silently not change. A subset (fine-tuning a head) is fine.
        model_params = {id(p) for p in model.parameters()}
        for index, opt in enumerate(optimizers):
            foreign = [
                f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)}, {p.dtype})"
                for g, group in enumerate(opt.param_groups)
                for i, p in enumerate(group["params"])
                if id(p) not in model_params
            ]
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise ValueError(
                    f"setup(): optimizer {index} ({type(opt).__name__}) holds {len(foreign)} parameter(s) that are not "
                    f"parameters of the model passed with it: {shown}. Create the optimizer from this model's "
                    "parameters (e.g. `torch.optim.SGD(model.parameters(), ...)`), or set up each model "
                    "with its own optimizers."
                )

    # -- the step ------------------------------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, *args: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """Use instead of ``loss.backward()``; extra arguments (``retain_graph``, ``inputs``, ...) pass on."""
        if self._plain_backward:  # neither the strategy nor the precision adds anything
            tensor.backward(*args, **kwargs)
            return
        if model is None and len(self._models) == 1:
            model = self._models[0]
        # The strategy needs what it wrapped (e.g. DeepSpeed's engine), not the user's module.
        module = model.forward_module if isinstance(model, _LiteModule) else model
        self._strategy.backward(tensor, module, *args, **kwargs)

    @contextmanager
    def autocast(self) -> Generator[None, None, None]:
        """Run the block under the precision's autocast (the set-up model's forward already does)."""
        with self._precision.forward_context():
            yield

    @contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Generator[None, None, None]:
        """Skip the gradient synchronization of ``backward`` inside the block (gradient accumulation).

        With DDP-like strategies (ddp, ddp_spawn, ddp_fork, ddp_sharded, fsdp) the gradients of the
        backward passes inside the block stay local and are summed into the next synchronized
        backward. In one process it does nothing. DeepSpeed: stages 0 and 1 skip the synchronization,
        stage 3 synchronizes anyway (correct, just not skipped), and stage 2 raises (DeepSpeed would
        keep only the last micro-batch; accumulate with ``gradient_accumulation_steps`` there).
        ``enabled=False`` makes it a no-op, for ``enabled=not is_last_micro_batch``.
        """
        if not isinstance(module, _LiteModule):
            raise TypeError(
                "no_backward_sync() takes the model that `setup()` returned, got "
                f"{type(module).__name__}; call `model = self.setup(model)` first"
            )
        if not enabled:
            yield
            return
        with self._strategy.no_backward_sync(module.forward_module):
            yield

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip the gradients of ``module``'s parameters after ``backward``, before ``optimizer.step()``.

        Pass ``clip_val`` to clamp every gradient value to ``[-clip_val, clip_val]``, or ``max_norm``
        to rescale them so that their total ``norm_type`` norm is at most ``max_norm`` (the norm
        before clipping is returned). Gradients scaled for 16-mixed are unscaled first, and there a
        non-finite norm is not an error: the loss scaler skips that step and lowers the scale.
        The strategy decides how: with ``ddp_sharded`` the norm is reduced over every rank's
        share, and DeepSpeed refuses (it clips inside its step: ``gradient_clipping`` in its config).
        """
        if (clip_val is None) == (max_norm is None):
            raise ValueError(
                "clip_gradients() needs exactly one of clip_val= (by value) or max_norm= (by norm)"
            )
        inner = optimizer.optimizer if isinstance(optimizer, _LiteOptimizer) else optimizer
        if clip_val is not None:
            self._strategy.clip_gradients_value(module, inner, clip_val)
            return None
        assert max_norm is not None
        return self._strategy.clip_gradients_norm(
            module, inner, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def to_device(self, obj: Any) -> Any:
        """Move a module, a tensor or any collection of tensors to this process's device."""
        if isinstance(obj, nn.Module):
            return obj.to(self.device)
        return move_to_device(obj, self.device)

    # -- collectives ---------------------------------------------------------------------------------

    @overload
    def all_gather(
        self, data: torch.Tensor | float, group: Any = None, sync_grads: bool = False
    ) -> torch.Tensor: ...

    @overload
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any: ...

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors (or collections of them, or Python numbers) from every process.

        Each tensor gains a leading dimension of size ``world_size``; in a single process it is
        returned as it is.
        """
        self._ensure_environment("all_gather()")
        if isinstance(data, (int, float, bool)):
            data = torch.tensor(data, device=self.device)
        return self._strategy.all_gather(data, group=group, sync_grads=sync_grads)

    def gather_for_metrics(self, data: Any) -> Any:
        """Gather every process's evaluation outputs into exactly the dataset's samples, each once.

        Use it on what you computed over a loader set up with ``setup_dataloaders(..., even=False)``:
        each process passes its tensors (first dimension: its samples; the processes may have
        different numbers of them), or a dict / list / tuple of such tensors, and every process
        gets the whole back, concatenated along the first dimension in the order the samples were
        dealt out (for a loader that does not shuffle, the dataset's order). In one process the
        data come back as they are.
        """
        self._ensure_environment("gather_for_metrics()")
        if self.world_size == 1:
            return data
        if isinstance(data, torch.Tensor):
            return _interleave(lite_collectives.all_gather_uneven(data.contiguous()))
        if isinstance(data, dict):
            return {key: self.gather_for_metrics(value) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self.gather_for_metrics(value) for value in data)
        raise TypeError(
            f"gather_for_metrics() takes a tensor or a dict / list / tuple of tensors, got {type(data).__name__}"
        )

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        """Reduce tensors (or collections of them, or Python numbers) over every process.

        ``reduce_op`` is ``"mean"``, ``"sum"``, ``"max"``, ``"min"`` or ``"product"``; the input is
        not modified. In a single process the data come back unchanged.
        """
        self._ensure_environment("all_reduce()")
        if isinstance(data, (int, float, bool)):
            data = torch.tensor(data, device=self.device)
        return self._strategy.all_reduce(data, op=reduce_op, group=group)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` (any picklable object or tensor) from process ``src`` to all the others."""
        self._ensure_environment("broadcast()")
        return self._strategy.broadcast(obj, src=src)

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process has reached this call."""
        self._ensure_environment("barrier()")
        self._strategy.barrier(name=name)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        """Run the block on global rank 0 first, then on the other processes (e.g. to download a data set once).

        With ``local=True``, local rank 0 of each node goes first (a download to each node's own disk).
        The others wait in a barrier, bounded by the process group's timeout.
        """
        self._ensure_environment("rank_zero_first()")
        first = (self.local_rank if local else self.global_rank) == 0
        if not first:
            self.barrier("rank_zero_first")
        try:
            yield
        finally:  # also when the block raised on rank 0: the others are not left waiting
            if first:
                self.barrier("rank_zero_first")

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the process with global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    # -- logging and progress -----------------------------------------------------------------------

    @property
    def loggers(self) -> list[Any]:
        """The loggers given as ``LightningLite(loggers=...)``."""
        return list(self._loggers)

    @property
    def logger(self) -> Any:
        """The first logger, or None."""
        return self._loggers[0] if self._loggers else None

    def log(self, name: str, value: Any, step: int | None = None, reduce: str | None = None) -> None:
        """Log one value (a number or a one-element tensor) to every logger, on global rank 0.

        With ``reduce`` (``"mean"``, ``"sum"``, ``"max"``, ``"min"``) the value is reduced over every
        process first: then every process must call it, as for :meth:`all_reduce`.
        """
        self.log_dict({name: value}, step=step, reduce=reduce)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None, reduce: str | None = None) -> None:
        """Log several values at once (see :meth:`log`); tensors become Python numbers."""
        if not isinstance(metrics, dict):
            raise TypeError(f"log_dict() takes a dict of name -> value, got {type(metrics).__name__}")
        if reduce is not None:
            if reduce not in ("mean", "sum", "max", "min"):
                raise ValueError(f"log(reduce={reduce!r}): expected 'mean', 'sum', 'max' or 'min'")
            metrics = {
                key: self.all_reduce(
                    torch.as_tensor(value, dtype=torch.float64).to(self.device), reduce_op=reduce
                )
                for key, value in metrics.items()
            }
        if not self.is_global_zero or not self._loggers:
            return
        numbers = {key: _as_number(key, value) for key, value in metrics.items()}
        for logger in self._loggers:
            logger.log_metrics(numbers, step=step)

    def _finalize_loggers(self) -> None:
        if self.is_global_zero:
            for logger in self._loggers:
                finalize = getattr(logger, "finalize", None)
                if callable(finalize):
                    finalize()

    def progress(self, iterable: Any, desc: str | None = None, **tqdm_kwargs: Any) -> Any:
        """Iterate with a tqdm progress bar on global rank 0 (when tqdm is installed); plainly elsewhere.

        The returned object always takes ``set_postfix(loss=...)`` and ``set_description(...)``
        (doing nothing without a bar), so one loop serves every process. ``tqdm_kwargs`` go to tqdm.
        """
        return progress_bar(iterable, self.is_global_zero, desc=desc, **tqdm_kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------

    def save(self, content: Any, filepath: str | Path, *, include_rng: bool = False) -> None:
        """Use instead of ``torch.save``: written once (global rank 0), atomically; call it on every process.

        Set-up models and optimizers inside ``content`` are stored as their full state dicts
        (with sharded strategies the strategy gathers or shards them as it needs). ``filepath``
        is a local path or a URL that fsspec knows (``memory://``, ``s3://``, ...; needs
        ``lite-strategies[fsspec]``). ``include_rng=True`` adds every rank's random number
        generator states (Python, NumPy if installed, torch CPU and CUDA) under the key
        ``"lite_rng_states"`` (a list indexed by global rank) of the dict ``content``, so that a
        resume with :meth:`load` continues the same random streams. It is off by default, so a
        file holds exactly what you passed (e.g. a ``state_dict`` that ``torch.load`` users read).
        """
        _check_save_order(content, filepath)
        self._ensure_environment("save()")
        if include_rng:
            if not isinstance(content, dict):
                raise TypeError(
                    f"save(include_rng=True) adds the RNG states to a dict of state; got {type(content).__name__}. "
                    "Pass a dict such as {'model': model, 'optimizer': optimizer}."
                )
            content = {**content, RNG_KEY: self._gather_rng_states()}
        self._strategy.save_checkpoint(filepath, _strategy_objects(content))

    def _gather_rng_states(self) -> list[Any]:
        from lite_collectives import all_gather_object
        from lite_data import rng_states

        mine = rng_states()
        if self.world_size == 1:
            return [mine]
        return all_gather_object(mine)

    def load(
        self, filepath: str | Path, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> dict[str, Any]:
        """Use instead of ``torch.load``: every process loads, tensors land on this process's device.

        Without ``state``, returns what was saved. With ``state`` (e.g. ``{"model": model,
        "optimizer": optimizer, "epoch": 0}``), loads the saved entries of the same keys into
        the set-up models and optimizers in place, replaces the plain values in ``state``, and
        returns the saved entries ``state`` did not name. Only tensors, containers and plain
        values load by default; pass ``weights_only=False`` for a checkpoint you trust that holds
        other Python objects.
        """
        if state is None:
            return self._strategy.load_checkpoint(filepath, weights_only=weights_only)  # type: ignore[no-any-return,unused-ignore]
        if not isinstance(state, dict):
            raise TypeError(
                f"load(state=...) takes a dict like {{'model': model}}, got {type(state).__name__}."
            )
        targets = {key: _strategy_objects(value) for key, value in state.items()}
        rest = self._strategy.load_checkpoint(filepath, targets, weights_only=weights_only)
        for key, value in targets.items():
            state[key] = _write_back(state[key], value)
        if isinstance(rest, dict) and RNG_KEY in rest and RNG_KEY not in state:
            self._restore_rng_states(rest.pop(RNG_KEY), filepath)
        return rest  # type: ignore[no-any-return,unused-ignore]

    def _restore_rng_states(self, saved: Any, filepath: str | Path) -> None:
        from lite_data import set_rng_states

        if not isinstance(saved, (list, tuple)) or len(saved) != self.world_size:
            count = len(saved) if isinstance(saved, (list, tuple)) else "?"
            rank_zero_warn(
                f"{str(filepath)!r} holds the RNG states of {count} processes and this run has {self.world_size}: "
                "the random streams are not restored (the run goes on with the current ones).",
                UserWarning,
                stacklevel=3,
            )
            return
        set_rng_states(saved[self.global_rank])

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


RNG_KEY = "lite_rng_states"  # where save(include_rng=True) puts every rank's RNG states


def _check_save_order(content: Any, filepath: Any) -> None:
    """Refuse ``save(path, state)``: Lightning Fabric's order, the reverse of LightningLite's."""
    path_like = (str, os.PathLike)
    if isinstance(content, path_like) and not isinstance(filepath, path_like):
        raise TypeError(
            f"save(content, filepath) takes the state first and the path second; got a path "
            f"{os.fspath(content)!r} first and a {type(filepath).__name__} second. Lightning Fabric's "
            "save(path, state) is the other way round: write self.save(state, path)."
        )
    if not isinstance(filepath, path_like):
        raise TypeError(
            f"save(content, filepath): filepath must be a str or os.PathLike (a local path or an fsspec URL), "
            f"got {type(filepath).__name__}"
        )


def _is_stateful(value: Any) -> bool:
    return not isinstance(value, type) and (
        callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))
    )


def _write_back(original: Any, loaded: Any) -> Any:
    """What an entry of the user's ``state`` becomes after a load: set-up and stateful objects stay (they
    loaded in place), containers keep their identity with their plain values replaced."""
    if _is_stateful(original):
        return original
    if not any(_is_stateful(leaf) for leaf in state_leaves(original)):
        return loaded  # plain data: replaced whole by what was saved
    if isinstance(original, dict) and isinstance(loaded, dict):
        for key in list(original):
            if key in loaded:
                original[key] = _write_back(original[key], loaded[key])
        return original
    if (
        isinstance(original, (list, tuple))
        and not hasattr(original, "_fields")
        and isinstance(loaded, (list, tuple))
        and len(original) == len(loaded)
    ):
        values = [_write_back(o, v) for o, v in zip(original, loaded)]
        if isinstance(original, list):
            original[:] = values
            return original
        return type(original)(values)
    return loaded


def _strategy_objects(content: Any) -> Any:
    """Replace set-up models and optimizers (at any depth of dicts, lists, tuples) by what the strategy built."""

    def unwrap(value: Any, _: Any) -> Any:
        if isinstance(value, _LiteModule):
            return value.forward_module
        if isinstance(value, _LiteOptimizer):
            return value.optimizer
        return value

    return map_state(content, unwrap)


class _SkipInitialisation(TorchFunctionMode):
    """Inside it the ``torch.nn.init`` functions leave their tensor as it is (``init_module(empty_init=True)``)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def _check_materialisable(model: nn.Module, strategy_name: str, what: str) -> None:
    """Refuse a model on the meta device under a strategy that cannot materialise it (all but fsdp)."""
    if strategy_name.startswith("fsdp"):
        return
    meta = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if meta:
        shown = ", ".join(meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise ValueError(
            f"{what}: the model has {len(meta)} parameter(s)/buffer(s) on the meta device ({shown}), which hold no "
            f"values, and strategy={strategy_name!r} cannot materialise them. Create the model inside "
            "`with self.init_module():` (on this process's device), or materialise it before setup "
            "(`model.to_empty(device=self.device)`, then initialise or load the weights); strategy='fsdp' "
            "materialises a meta-device model at setup with each submodule's reset_parameters()."
        )


def _check_loggers(loggers: Any) -> list[Any]:
    if loggers is None:
        return []
    found = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    for logger in found:
        if not callable(getattr(logger, "log_metrics", None)):
            raise TypeError(
                f"loggers: {type(logger).__name__} has no log_metrics(metrics, step) method; pass "
                "lite_facade.CSVLogger(...), lite_facade.TensorBoardLogger(...) or an object with that method"
            )
    return found


def _as_number(name: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"log({name!r}, ...): a tensor of shape {tuple(value.shape)} is not one value; "
                "log a number or a one-element tensor (e.g. loss.mean())"
            )
        return value.detach().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log({name!r}, ...): {type(value).__name__} is not a number") from None
    return value


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Undo the unpadded sampler's dealing: sample ``j`` of rank ``r`` was position ``j * world_size + r``."""
    if any(p.dim() == 0 for p in parts):
        raise ValueError(
            "gather_for_metrics(): the tensors need a first (samples) dimension; got a 0-d tensor"
        )
    lengths = [p.shape[0] for p in parts]
    if max(lengths) - min(lengths) > 1 or lengths != sorted(lengths, reverse=True):
        # Not dealt out by the unpadded sampler: keep each rank's block, in rank order.
        return torch.cat(parts)
    longest = lengths[0]
    padded = [
        torch.cat([p, p.new_zeros((longest - p.shape[0], *p.shape[1:]))]) if p.shape[0] < longest else p
        for p in parts
    ]
    stacked = torch.stack(padded, dim=1)  # (longest, world_size, ...)
    return stacked.reshape(longest * len(parts), *parts[0].shape[1:])[: sum(lengths)]
