"""The 'fsdp' strategy: torch FSDP2 (``fully_shard``) with sharded checkpoints (torch.distributed.checkpoint).

Parameters, gradients and optimizer states are sharded across the processes: each process keeps
a slice (a DTensor shard) of every parameter, all-gathers a module's parameters just before its
forward and backward, and reduce-scatters the gradients after backward. Checkpoints are a
directory with one file per process (torch.distributed.checkpoint), loadable on any number of
processes, or optionally a single full file.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.optim import Optimizer

from lite_devices import move_to_device
from lite_strategies._checkpoint_io import is_url
from lite_strategies._errors import CheckpointError, StrategyError
from lite_strategies._parallel import ParallelStrategy
from lite_strategies._state import restore_state, saved_form
from lite_strategies.fsdp._checkpoint import (
    MARKER,
    META_FILE,
    FullLoader,
    marker_slot,
    named_optimizer_state,
    resolve_markers,
    slot_name,
)
from lite_strategies.fsdp._config import import_fsdp, wrap_predicate
from lite_strategies.fsdp._optimizers import constructor_defaults, optimizer_plan, rebuild_optimizer

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

_PathLike = str | os.PathLike[str]

_STATE_DICT_TYPES = ("sharded", "full")
_MIXED = ("16-mixed", "bf16-mixed")


class FSDPStrategy(ParallelStrategy):
    """Fully sharded data parallel on torch FSDP2 (``torch.distributed.fsdp.fully_shard``), one process per device.

    Launched like ``ddp`` (the script is re-run for the other local processes, or they come from
    torchrun/SLURM). On the CPU it uses a CPU device mesh and gloo.

    Keyword arguments (besides ``process_group_backend`` and ``timeout``):
        auto_wrap_policy: which submodules get their own FSDP unit (their parameters are gathered
            and freed together): a set of module classes, or ``callable(module) -> bool``. The
            root module is always sharded last (bottom-up). Default: the root only.
        reshard_after_forward: free gathered parameters after forward (True) or keep them for
            backward (False); default None lets FSDP choose (True except for the root).
        cpu_offload: True or a ``CPUOffloadPolicy``: keep sharded parameters, gradients and
            optimizer state in CPU memory. On accelerator "cpu" pinning is refused.
        mixed_precision: a ``MixedPrecisionPolicy`` to use instead of the one the precision flag
            gives ("16-mixed"/"bf16-mixed": param_dtype float16/bfloat16, reduce_dtype float32).
        state_dict_type: "sharded" (default: [`save_checkpoint`][lite_strategies.FSDPStrategy.save_checkpoint] writes a directory of
            shards) or "full" (one file written by rank 0).

    Raises:
        StrategyError: at construction, for a value above that cannot work, or a torch without FSDP2.
    """

    strategy_name: ClassVar[str] = "fsdp"
    accepted_kwargs: ClassVar[tuple[str, ...]] = (
        *ParallelStrategy.accepted_kwargs,
        "auto_wrap_policy",
        "reshard_after_forward",
        "cpu_offload",
        "mixed_precision",
        "state_dict_type",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fsdp = import_fsdp()
        options = self._backend_kwargs
        self._wrap_policy = wrap_predicate(options.pop("auto_wrap_policy", None))
        reshard = options.pop("reshard_after_forward", None)
        if reshard is not None and not isinstance(reshard, bool):
            raise StrategyError(f"reshard_after_forward must be True, False or None, got {reshard!r}")
        self._reshard_after_forward: bool | None = reshard
        self._offload_policy = self._check_offload(fsdp, options.pop("cpu_offload", False))
        self._mp_policy = self._check_mixed_precision(fsdp, options.pop("mixed_precision", None))
        state_dict_type = options.pop("state_dict_type", "sharded")
        if state_dict_type not in _STATE_DICT_TYPES:
            raise StrategyError(
                f"state_dict_type must be 'sharded' (a directory of shards, loadable on any number of "
                f"processes) or 'full' (one file from rank 0), got {state_dict_type!r}"
            )
        self._state_dict_type: str = state_dict_type
        self._mesh: DeviceMesh | None = None
        # optimizer -> the sharded module it was set up with (its state dict is keyed by that module's names)
        self._optimizer_modules: weakref.WeakKeyDictionary[Optimizer, nn.Module] = weakref.WeakKeyDictionary()

    def _check_offload(self, fsdp: Any, cpu_offload: Any) -> OffloadPolicy | None:
        if cpu_offload is None or cpu_offload is False:
            return None
        if cpu_offload is True:
            return fsdp.CPUOffloadPolicy(pin_memory=self.accelerator != "cpu")
        if not isinstance(cpu_offload, fsdp.CPUOffloadPolicy):
            raise StrategyError(
                f"cpu_offload must be True, False or a torch.distributed.fsdp.CPUOffloadPolicy, got {cpu_offload!r}"
            )
        if cpu_offload.pin_memory and self.accelerator == "cpu":
            raise StrategyError(
                "cpu_offload=CPUOffloadPolicy(pin_memory=True) pins memory for copies to an accelerator, and "
                "accelerator='cpu' has none (pinning fails); pass CPUOffloadPolicy(pin_memory=False) or cpu_offload=True"
            )
        return cpu_offload

    def _check_mixed_precision(self, fsdp: Any, policy: Any) -> MixedPrecisionPolicy | None:
        if policy is not None:
            if not isinstance(policy, fsdp.MixedPrecisionPolicy):
                raise StrategyError(
                    f"mixed_precision must be a torch.distributed.fsdp.MixedPrecisionPolicy or None, got {policy!r}"
                )
            return policy
        if self.precision.name in _MIXED:
            # Compute (and the all-gather) in the low dtype, gradients reduced in float32.
            return fsdp.MixedPrecisionPolicy(param_dtype=self.precision.dtype, reduce_dtype=torch.float32)
        return None  # 32/64-true: plain; 16/bf16-true: the precision converts the parameters themselves

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_mesh"] = None
        state.pop("_optimizer_modules", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._optimizer_modules = weakref.WeakKeyDictionary()

    @property
    def mixed_precision_policy(self) -> MixedPrecisionPolicy | None:
        """The ``MixedPrecisionPolicy`` given to ``fully_shard`` (None: parameters' own dtype)."""
        return self._mp_policy

    @property
    def state_dict_type(self) -> str:
        """ "sharded" (checkpoints are directories of shards) or "full" (one file)."""
        return self._state_dict_type

    # ------------------------------------------------------------------ setup
    def device_mesh(self) -> DeviceMesh:
        """The 1-D mesh of every process that parameters are sharded over (built on first use)."""
        if self._mesh is None:
            import lite_collectives

            if not lite_collectives.is_initialized():
                raise StrategyError(
                    "FSDPStrategy needs the process group: call setup_environment() first (the launcher "
                    "and LightningLite do)"
                )
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.root_device.type, (self.world_size,))
        return self._mesh

    def setup_module(self, module: nn.Module, *, move_to_device: bool = True) -> nn.Module:
        """Convert the module to the precision and shard it in place with ``fully_shard``; returns it.

        ``fully_shard`` places the shards on this process's device itself, so ``move_to_device``
        has no effect here. A module that is already an ``FSDPModule`` (sharded by the user) is
        kept as it is. A module on the meta device (created under ``torch.device("meta")``) is
        sharded first, then each process allocates its shards on its device and fills them with
        every submodule's ``reset_parameters()``; a submodule with parameters of its own but no
        ``reset_parameters`` raises [`StrategyError`][lite_strategies.StrategyError] before anything is sharded.
        """
        fsdp = import_fsdp()
        on_meta = _check_materialisable(module)
        module = self.precision.convert_module(module)
        if not isinstance(module, fsdp.FSDPModule):
            kwargs: dict[str, Any] = {
                "mesh": self.device_mesh(),
                "reshard_after_forward": self._reshard_after_forward,
            }
            if self._mp_policy is not None:
                kwargs["mp_policy"] = self._mp_policy
            if self._offload_policy is not None:
                kwargs["offload_policy"] = self._offload_policy
            if self._wrap_policy is not None:
                # Bottom-up, as fully_shard requires: reversed pre-order puts every module after its descendants.
                for submodule in reversed(list(module.modules())):
                    if submodule is not module and self._wrap_policy(submodule):
                        fsdp.fully_shard(submodule, **kwargs)
            fsdp.fully_shard(module, **kwargs)
        if on_meta:
            _materialise(module, self.root_device)
        self._wrapped.append(weakref.ref(module))
        return module

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer], *, move_to_device: bool = True
    ) -> tuple[nn.Module, list[Optimizer]]:
        """Shard the module, then rebuild each optimizer over the sharded parameters; returns both.

        ``fully_shard`` replaces every parameter by a new (DTensor) one, so an optimizer built
        before holds stale tensors. Each optimizer is built again as ``type(opt)(param_groups,
        **opt.defaults)``, its groups mapped old -> new parameter by name and keeping each group's
        hyperparameters. Use the returned optimizers (an LR scheduler built before this call still
        points at the old one: build it after). An optimizer that has already stepped, or that holds
        parameters not in ``module``, raises [`StrategyError`][lite_strategies.StrategyError] (before anything is sharded).
        """
        names = {id(param): name for name, param in module.named_parameters()}
        # Everything that can be refused is checked before the module is sharded (in place).
        plans = [optimizer_plan(opt, index, names) for index, opt in enumerate(optimizers)]
        defaults = [constructor_defaults(opt, index) for index, opt in enumerate(optimizers)]
        module = self.setup_module(module, move_to_device=move_to_device)
        sharded = dict(module.named_parameters())
        rebuilt = []
        for opt, groups, kwargs in zip(optimizers, plans, defaults):
            new = rebuild_optimizer(opt, groups, kwargs, sharded)
            self._optimizer_modules[new] = module
            rebuilt.append(new)
        return module, rebuilt

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Clip by the norm over every shard (DTensor gradients reduce it); returns it as a plain tensor."""
        norm = super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        full_tensor = getattr(norm, "full_tensor", None)  # a replicated DTensor: same value everywhere
        return full_tensor() if full_tensor is not None else norm

    def no_backward_sync(self, module: nn.Module) -> AbstractContextManager[Any]:
        """Backward inside accumulates unsharded gradients locally, with no reduce-scatter.

        FSDP2's ``set_requires_gradient_sync(False)`` on every FSDP unit of ``module``: the
        sharded ``.grad`` is not updated inside; the next backward outside the context reduces the
        accumulated sum (mean over processes) into it. Costs the memory of unsharded gradients.
        """
        fsdp = import_fsdp()
        if not isinstance(module, fsdp.FSDPModule):
            raise StrategyError(
                f"no_backward_sync needs the module returned by setup_module (an FSDPModule), "
                f"got {type(module).__name__}"
            )
        return _no_gradient_sync(module)

    # ------------------------------------------------------------------ state dicts
    def _module_of(self, optimizer: Optimizer) -> nn.Module:
        module = self._optimizer_modules.get(optimizer)
        if module is None:
            raise StrategyError(
                f"this {type(optimizer).__name__} was not returned by FSDPStrategy.setup_module_and_optimizers: "
                "its sharded state is keyed by its module's parameter names, so pass the optimizer setup returned"
            )
        return module

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The full (unsharded) state dict on every rank: a collective, call it on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))

    def get_optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """The full optimizer state dict, keyed by parameter names, on every rank (a collective).

        An optimizer that never stepped gets its state initialized first (torch's
        ``get_optimizer_state_dict`` runs one step with zero gradients and learning rate 0).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        module = self._module_of(optimizer)
        return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> None:
        """Load a full state dict (original names, plain tensors) into the sharded module; every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(
            module, state_dict, options=StateDictOptions(full_state_dict=True, strict=strict)
        )

    def load_optimizer_state_dict(self, optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
        """Load a full optimizer state dict (keyed by names, or by index as ``optimizer.state_dict()`` gives)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        module = self._module_of(optimizer)
        state_dict = named_optimizer_state(optimizer, module, state_dict)
        set_optimizer_state_dict(
            module,
            optimizer,
            state_dict,
            options=StateDictOptions(full_state_dict=True),
        )

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: _PathLike, state: Any) -> None:
        """Save ``state`` (set-up modules and optimizers anywhere in dicts/lists, and plain values); every rank.

        ``state_dict_type="sharded"``: ``path`` becomes a directory; modules and optimizers are
        written as shards by every process with torch.distributed.checkpoint, the rest (and where
        each state went) to ``path/lite_state.pt`` by rank 0. It loads on any number of processes.
        ``"full"``: rank 0 gathers the full state dicts and writes one file, like DDP does.
        """
        if self._state_dict_type == "full":
            converted = saved_form(state, self._full_module_state, self._full_optimizer_state)
            if self.is_global_zero:
                self.checkpoint_io.save_checkpoint(converted, path)
            self.barrier("save_checkpoint")
            return
        import torch.distributed.checkpoint as dcp

        if is_url(path):
            raise CheckpointError(
                f"{os.fspath(path)!r} is a URL, but FSDP's sharded checkpoint (a torch.distributed.checkpoint "
                "directory written by every process) goes to a local or shared filesystem path only; pass such "
                "a path, or build the strategy with state_dict_type='full' to write one file, which can go to "
                "any fsspec URL"
            )
        directory = Path(path)
        if directory.is_file():
            raise CheckpointError(
                f"{os.fspath(path)!r} is a file, but FSDP's sharded checkpoint is a directory: pass a directory "
                "path, or build the strategy with state_dict_type='full' to write one file"
            )
        slots: dict[str, Any] = {}

        def module_slot(module: nn.Module, where: tuple[Any, ...]) -> dict[str, Any]:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            slot = slot_name(where)
            slots[slot] = get_model_state_dict(module)
            return {MARKER: slot, "kind": "module"}

        def optimizer_slot(optimizer: Optimizer, where: tuple[Any, ...]) -> dict[str, Any]:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            slot = slot_name(where)
            slots[slot] = get_optimizer_state_dict(self._module_of(optimizer), optimizer)
            return {MARKER: slot, "kind": "optimizer"}

        meta = saved_form(state, module_slot, optimizer_slot)
        if self.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
        self.barrier("save_checkpoint")
        if slots:
            dcp.save(slots, checkpoint_id=directory)
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(meta, directory / META_FILE)
        self.barrier("save_checkpoint")

    def _full_module_state(self, module: nn.Module, where: tuple[Any, ...]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # cpu_offload: gathered on rank 0 only, in CPU memory (the other ranks get an empty dict)
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _full_optimizer_state(self, optimizer: Optimizer, where: tuple[Any, ...]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self._module_of(optimizer), optimizer, options=options)

    def load_checkpoint(
        self, path: _PathLike, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> Any:
        """Load a sharded checkpoint directory or a full file, on any number of processes; every rank.

        Without ``state``: return what was saved, with full (gathered) state dicts; for a directory
        every process reads all shards into memory. With ``state``: load its modules and optimizers
        in place (from a directory each process reads only what its shards need; from a full file,
        e.g. one saved by DDP, each process keeps its slice), replace its plain values, and return
        the saved entries ``state`` did not name (see [`Strategy.load_checkpoint`][lite_strategies.Strategy.load_checkpoint]).
        """
        directory = Path(path)
        if not directory.is_dir():
            return super().load_checkpoint(path, state, weights_only=weights_only)
        if not (directory / ".metadata").is_file():
            raise CheckpointError(
                f"{os.fspath(path)!r} is a directory without torch.distributed.checkpoint's '.metadata' file: "
                "not a sharded checkpoint, or one whose saving did not finish"
            )
        meta = self._read_meta(directory, weights_only)
        full = FullLoader(directory)
        if state is None:
            return move_to_device(resolve_markers(meta, full), self.root_device)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        templates: dict[str, Any] = {}
        targets: list[tuple[str, nn.Module | Optimizer]] = []

        def template(target: nn.Module | Optimizer, value: Any) -> None:
            # Each process reads only the slices of its shards: DCP loads into these templates.
            kind = "module" if isinstance(target, nn.Module) else "optimizer"
            slot = marker_slot(value, kind)
            if slot is None:
                key = next(k for k, v in state.items() if v is target)
                raise CheckpointError(
                    f"entry {key!r} of {os.fspath(path)!r} is not a saved {kind} state, so it cannot be loaded "
                    f"into the {type(target).__name__} given for it"
                )
            if isinstance(target, nn.Module):
                templates[slot] = get_model_state_dict(target)
            else:
                templates[slot] = get_optimizer_state_dict(self._module_of(target), target)
            targets.append((slot, target))

        def value(saved: Any) -> Any:
            return move_to_device(resolve_markers(saved, full), self.root_device)

        rest = restore_state(path, meta, state, template, template, value)
        if templates:
            dcp.load(templates, checkpoint_id=directory)
        self._apply_templates(targets, templates)
        return value(rest)

    def _apply_templates(
        self, targets: list[tuple[str, nn.Module | Optimizer]], templates: dict[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        for slot, target in targets:
            if isinstance(target, nn.Module):
                set_model_state_dict(target, templates[slot])
            else:
                set_optimizer_state_dict(self._module_of(target), target, templates[slot])

    def _read_meta(self, directory: Path, weights_only: bool) -> Any:
        meta_path = directory / META_FILE
        if meta_path.is_file():
            return self.checkpoint_io.load_checkpoint(
                meta_path, map_location="cpu", weights_only=weights_only
            )
        # A DCP checkpoint written by other code: its top-level keys are the entries.
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(directory).read_metadata()
        planner_data = metadata.planner_data or {}
        keys = {path[0] for path in planner_data.values()} if planner_data else set()
        keys |= {fqn.split(".")[0] for fqn in metadata.state_dict_metadata if fqn not in planner_data}
        return {key: {MARKER: key, "kind": None} for key in sorted(keys)}


@contextlib.contextmanager
def _no_gradient_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _check_materialisable(module: nn.Module) -> bool:
    """Whether ``module`` has tensors on the meta device; raises if some cannot be initialised."""
    if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        return False
    missing = [
        f"{name or '<root>'} ({type(sub).__name__})"
        for name, sub in module.named_modules()
        if any(t.is_meta for t in _own_tensors(sub)) and not callable(getattr(sub, "reset_parameters", None))
    ]
    if missing:
        raise StrategyError(
            "the module is on the meta device, and fsdp materialises it by calling each submodule's "
            f"reset_parameters(), which these lack: {', '.join(missing[:5])}. Give them a reset_parameters() "
            "that initialises their own parameters and buffers, or create the model on a real device "
            "(init_module(empty_init=False))"
        )
    return True


def _materialise(module: nn.Module, device: torch.device) -> None:
    """Allocate the (sharded) meta tensors on ``device``, then initialise them with ``reset_parameters``."""
    module.to_empty(device=device)
    with torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if _own_tensors(sub) and callable(reset):
                reset()
