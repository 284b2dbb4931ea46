"""The 'xla' strategy (aliases 'tpu_spawn', 'xla_spawn'): torch_xla on TPU cores (or XLA:CPU).

One process per XLA device, started by torch_xla's own launcher (`XLALauncher`).
There is no torch.distributed process group: gradients are averaged across replicas in
[`XLAStrategy.optimizer_step`][lite_strategies.XLAStrategy.optimizer_step] (``xm.reduce_gradients``, as ``xm.optimizer_step`` does)
and the collectives are torch_xla's (``xm.all_gather``, ``xm.all_reduce``, ``xm.rendezvous``).

``torch_xla`` is imported inside the methods only: importing this module (and building the
strategy in the main process) never imports it and never starts the XLA runtime.
"""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

import lite_collectives
from lite_devices import move_to_device as _to_device  # setup_module_and_optimizers has a flag of that name
from lite_strategies._errors import StrategyError
from lite_strategies._registry import START_METHODS, get_strategy_spec
from lite_strategies._strategy import Strategy
from lite_strategies.launchers import Launcher

_PathLike = str | os.PathLike[str]

#: The precisions this strategy runs (its registry row's); others are refused at construction.
XLA_PRECISIONS = get_strategy_spec("xla").precisions
_START_METHODS = START_METHODS  # torch_xla's launcher takes the same two
# lite op name -> torch_xla's reduce type (mean is a sum scaled by 1 / world size).
_XLA_REDUCE = {
    "sum": "REDUCE_SUM",
    "mean": "REDUCE_SUM",
    "avg": "REDUCE_SUM",
    "max": "REDUCE_MAX",
    "min": "REDUCE_MIN",
    "product": "REDUCE_MUL",
    "prod": "REDUCE_MUL",
}


def _xla_device() -> torch.device:
    import torch_xla

    device = getattr(torch_xla, "device", None)  # torch_xla >= 2.5; xm.xla_device() is deprecated
    return torch.device(device() if device is not None else _xm().xla_device())


def _sync() -> None:
    """Cut the lazy graph here and run it (``torch_xla.sync()``; ``xm.mark_step()`` before 2.5)."""
    import torch_xla

    sync = getattr(torch_xla, "sync", None)
    if sync is not None:
        sync()
    else:
        _xm().mark_step()


def _xm() -> Any:
    import torch_xla.core.xla_model as xm

    return xm


def _xf() -> Any:
    import torch_xla.core.functions as xf  # the differentiable collectives

    return xf


def _xr() -> Any:
    import torch_xla.runtime as xr

    return xr


class XLAStrategy(Strategy):
    """Data parallel training on XLA devices (TPU cores; XLA:CPU with ``PJRT_DEVICE=CPU``).

    Each process drives one XLA device; ranks and world size come from ``torch_xla.runtime``
    once the launcher has started the processes (before that: rank 0 of
    ``num_nodes * len(devices)``). The module is moved to the device without a wrapper;
    [`optimizer_step`][lite_strategies.XLAStrategy.optimizer_step] averages the gradients over the replicas, steps through the
    precision plugin and cuts the lazy graph (``xm.mark_step``) so each step compiles once.

    Backend keyword arguments: ``start_method`` ("spawn", the default, or "fork") for
    torch_xla's launcher. Precisions: ``32-true`` and ``bf16-true``.
    """

    strategy_name: ClassVar[str] = "xla"
    accepted_kwargs: ClassVar[tuple[str, ...]] = ("start_method",)

    def __init__(self, *, accelerator: str = "xla", **kwargs: Any) -> None:
        super().__init__(
            accelerator=accelerator, **kwargs
        )  # the row refuses precisions other than XLA_PRECISIONS
        start_method = self._backend_kwargs.pop("start_method", "spawn")
        if start_method not in _START_METHODS:
            raise StrategyError(
                f"start_method={start_method!r} is not one torch_xla's launcher takes; accepted: "
                f"{', '.join(map(repr, _START_METHODS))}"
            )
        self._start_method: str = start_method
        self._launched = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._launched = False  # a new process has not set its environment up yet

    # ------------------------------------------------------------------ properties
    @property
    def start_method(self) -> str:
        """How torch_xla's launcher starts the processes ("spawn" or "fork")."""
        return self._start_method

    @property
    def num_processes(self) -> int:
        """Processes per node: one per XLA device."""
        return len(self._devices)

    @property
    def root_device(self) -> torch.device:
        """This process's XLA device (``torch_xla.device()`` once launched; ``devices[0]`` before)."""
        if not self._launched:
            return self._devices[0]
        return _xla_device()

    @property
    def world_size(self) -> int:
        """``torch_xla.runtime.world_size()`` once launched; ``num_nodes * devices`` before."""
        if not self._launched:
            return self._num_nodes * self.num_processes
        return int(_xr().world_size())

    @property
    def global_rank(self) -> int:
        """``torch_xla.runtime.global_ordinal()`` once launched; 0 before."""
        return int(_xr().global_ordinal()) if self._launched else 0

    @property
    def local_rank(self) -> int:
        """``torch_xla.runtime.local_ordinal()`` once launched; 0 before."""
        return int(_xr().local_ordinal()) if self._launched else 0

    @property
    def node_rank(self) -> int:
        """The host's index (``torch_xla.runtime.host_index()``) once launched; 0 before."""
        return int(_xr().host_index()) if self._launched else 0

    @property
    def launcher(self) -> Launcher | None:
        """An `XLALauncher` (torch_xla's spawn entry point)."""
        if self._launcher is None:
            from lite_strategies.launchers import make_launcher

            self._launcher = make_launcher("xla", self, start_method=self._start_method)
        return self._launcher

    # ------------------------------------------------------------------ setup
    def setup_environment(self) -> None:
        """In each process: take ranks and the device from torch_xla's runtime (there is no process group).

        Raises [`StrategyError`][lite_strategies.StrategyError] when torch_xla runs a different number of replicas than
        ``num_nodes * devices`` (torch_xla uses every device of a host).
        """
        self._launched = True
        expected = self._num_nodes * self.num_processes
        actual = self.world_size
        if actual != expected:
            self._launched = False
            raise StrategyError(
                f"torch_xla runs {actual} replica(s), but this strategy was set up for num_nodes x devices = "
                f"{self._num_nodes} x {self.num_processes} = {expected}. torch_xla uses every device of a "
                "host: pass devices=1 or the host's device count (or limit the devices torch_xla sees, e.g. "
                "CPU_NUM_DEVICES / TPU_PROCESS_BOUNDS)"
            )

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[torch.optim.Optimizer], *, move_to_device: bool = True
    ) -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        """Convert and move the module, then point the optimizers at the moved parameters.

        Moving a module to an XLA device replaces its parameters by new tensors (unlike a
        move between CPU and CUDA), so an optimizer built before would step the old CPU
        tensors: its parameter groups (and any state it holds) are re-keyed here.
        """
        before = dict(module.named_parameters())
        module = self.setup_module(module, move_to_device=move_to_device)
        after = dict(module.named_parameters())
        moved = {id(param): after[name] for name, param in before.items() if after[name] is not param}
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["params"] = [moved.get(id(p), p) for p in group["params"]]
            for old in [p for p in optimizer.state if id(p) in moved]:
                optimizer.state[moved[id(old)]] = _to_device(optimizer.state.pop(old), self.root_device)
        return module, list(optimizers)

    def module_to_device(self, module: nn.Module) -> nn.Module:
        """Move the module to this process's XLA device (in place); returns it."""
        return module.to(self.root_device)

    def batch_to_device(self, batch: Any) -> Any:
        """Return ``batch`` with its tensors on this process's XLA device."""
        return _to_device(batch, self.root_device)

    # ------------------------------------------------------------------ training step
    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """``xm.optimizer_step(optimizer, barrier=True)`` with the step through the precision plugin.

        Averages the gradients over the replicas (``xm.reduce_gradients``; nothing to do for
        one), steps, then ``xm.mark_step()`` so that each training step is one XLA graph.
        """
        xm = _xm()
        xm.reduce_gradients(optimizer)
        result = self.precision.optimizer_step(optimizer, **kwargs)
        _sync()
        return result

    # ------------------------------------------------------------------ collectives
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors (or numbers, or collections of them) from every replica with ``xm.all_gather``.

        Each tensor of shape ``S`` comes back as ``(world_size, *S)`` on this process's device;
        in one process the data is returned unchanged. ``group``: torch_xla replica groups
        (a list of lists of ordinals). ``sync_grads=True`` keeps the result in the autograd
        graph (``torch_xla.core.functions.all_gather``, over every replica: no ``group``).
        """
        if not self.is_distributed:
            return lite_collectives.all_gather(data, group=None, sync_grads=sync_grads)
        if sync_grads and group is not None:
            raise StrategyError(
                "all_gather(sync_grads=True) gathers over every replica on XLA (torch_xla's differentiable "
                "all_gather takes no replica groups); pass group=None, or sync_grads=False with the group"
            )
        xm = _xm()
        device = self.root_device
        data = tree_map_only((int, float), lambda x: torch.tensor(x, device=device), data)

        def gather(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.to(device).unsqueeze(0)
            if sync_grads:
                gathered: torch.Tensor = _xf().all_gather(tensor, dim=0)
                return gathered
            return xm.all_gather(tensor.detach(), dim=0, groups=group)

        return tree_map_only(torch.Tensor, gather, data)

    def all_reduce(self, data: Any, op: str = "mean", group: Any = None) -> Any:
        """Reduce tensors (or collections of them) over every replica with ``xm.all_reduce``.

        ``op``: sum, mean, max, min or product. The input is not changed; in one process it is
        returned as it is.
        """
        key = op.lower() if isinstance(op, str) else op
        if key not in _XLA_REDUCE:
            raise StrategyError(
                f"all_reduce op {op!r} is not one strategy 'xla' knows; accepted: sum, mean, max, min, product"
            )
        if not self.is_distributed:
            return lite_collectives.all_reduce(data, op=key, group=None)
        xm = _xm()
        device = self.root_device
        reduce_type = getattr(xm, _XLA_REDUCE[key])
        scale = 1.0 / self.world_size if key in ("mean", "avg") else 1.0
        data = tree_map_only((int, float), lambda x: torch.tensor(x, device=device), data)

        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            # a single tensor in: torch_xla returns a new tensor (a list would be reduced in place)
            reduced: torch.Tensor = xm.all_reduce(reduce_type, tensor.to(device), scale=scale, groups=group)
            return reduced

        return tree_map_only(torch.Tensor, reduce, data)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` from replica ``src`` to every replica; returns it everywhere.

        A tensor (same shape and dtype on every replica, as torch.distributed.broadcast asks)
        goes through one ``xm.all_reduce`` where the other replicas add zeros. Any other
        picklable object is sent as a tensor of its ``torch.save`` bytes: first its length,
        then the bytes, so the other replicas need not know its size.
        """
        if not self.is_distributed:
            return obj
        xm = _xm()
        device = self.root_device
        is_source = self.global_rank == src
        if isinstance(obj, torch.Tensor):
            mine = obj.to(device)
            return xm.all_reduce(xm.REDUCE_SUM, mine if is_source else torch.zeros_like(mine))
        payload = b""
        if is_source:
            buffer = io.BytesIO()
            torch.save(_to_device(obj, torch.device("cpu")), buffer)
            payload = buffer.getvalue()
        length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        size = int(xm.all_reduce(xm.REDUCE_SUM, length).cpu().item())
        # int32 rather than uint8: XLA sums wide integers on every backend
        data = torch.zeros(size, dtype=torch.int32)
        if is_source:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(torch.int32)
        received = xm.all_reduce(xm.REDUCE_SUM, data.to(device)).cpu().to(torch.uint8)
        loaded = torch.load(io.BytesIO(received.numpy().tobytes()), map_location="cpu", weights_only=False)
        return _to_device(loaded, device)

    def barrier(self, name: str | None = None) -> None:
        """Wait for every replica (``xm.rendezvous(name)``); a no-op in one process."""
        if self.is_distributed:
            _xm().rendezvous(name or "lite_barrier")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: _PathLike, state: Any) -> None:
        """Save like ``xm.save(state, path, master_only=True)``: global rank 0 writes CPU copies.

        Every replica must call it. The state is converted on every replica (modules and
        optimizers to their state dicts), global rank 0 moves it to the CPU and writes it with
        the checkpoint IO (atomically, for the default), then the replicas meet at a rendezvous.
        The file loads anywhere with ``torch.load``.
        """
        converted = self._convert_state(state)
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(_to_cpu(converted), path)
        self.barrier("lite_save_checkpoint")

    def load_checkpoint(
        self, path: _PathLike, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> Any:
        """Load a checkpoint on every replica, its tensors on this process's XLA device.

        The file is read onto the CPU, then moved: ``torch.load`` cannot map storages to XLA.
        ``state`` works as in [`Strategy.load_checkpoint`][lite_strategies.Strategy.load_checkpoint].
        """
        checkpoint = self.checkpoint_io.load_checkpoint(
            path, map_location=torch.device("cpu"), weights_only=weights_only
        )
        checkpoint = _to_device(checkpoint, self.root_device)
        if state is None:
            return checkpoint
        return self._restore_state(path, checkpoint, state)


def _to_cpu(data: Any) -> Any:
    """CPU copies of every tensor in ``data`` (one batched device-to-host transfer where torch_xla has it)."""
    convert = getattr(_xm(), "_maybe_convert_to_cpu", None)
    if convert is not None:
        return convert(data)
    return _to_device(data, torch.device("cpu"))
