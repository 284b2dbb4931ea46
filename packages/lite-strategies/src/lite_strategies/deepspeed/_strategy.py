"""The 'deepspeed' strategies: one DeepSpeed engine per set-up model, ZeRO stages 0-3.

DeepSpeed takes over what other strategies leave to the precision plugin and the optimizer:
it converts the model (bf16/fp16), keeps fp32 master weights in its own optimizer, scales
the loss, reduces the gradients and steps. So this strategy builds a DeepSpeed config from
its arguments and the precision flag, hands model and optimizer to ``deepspeed.initialize``
on the process group lite_collectives created, and routes backward and step to the engine.
``deepspeed`` is imported only inside the methods that need it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lite_strategies._errors import CheckpointError, StrategyError
from lite_strategies._parallel import ParallelStrategy
from lite_strategies.deepspeed._checkpoint import (
    MANIFEST,
    consolidate_deepspeed_checkpoint,
    holds_engines,
    load_engines,
    load_full_file,
    save_engines,
)
from lite_strategies.deepspeed._config import DeepSpeedOptions, build_config
from lite_strategies.deepspeed._precision import DeepSpeedPrecision

_PathLike = str | os.PathLike[str]

#: Set to "1" to let DeepSpeed JIT-build its shared-memory all-reduce op on the CPU (see setup_environment).
SHM_COMM_VAR = "LITE_DEEPSPEED_SHM_COMM"


class DeepSpeedStrategy(ParallelStrategy):
    """DeepSpeed ZeRO: one engine per model (``deepspeed.initialize``), one process per device.

    Keyword arguments: the fields of `DeepSpeedOptions` (``stage``, ``config``, the offload
    and ZeRO tuning knobs, the fp16 loss scaler, ``logging_level``), each documented there.

    ``process_group_backend`` and ``timeout`` (keyword arguments) are those of
    [`ParallelStrategy`][lite_strategies.ParallelStrategy]; DeepSpeed uses the process group this strategy creates.

    Raises:
        StrategyError: at construction, for a bad stage, offload setting or config, and for a
            precision DeepSpeed cannot run on the device (``"64-true"`` anywhere; float16 on a
            CPU without float16 kernels).
    """

    strategy_name: ClassVar[str] = "deepspeed"
    accepted_kwargs: ClassVar[tuple[str, ...]] = (
        *ParallelStrategy.accepted_kwargs,
        *DeepSpeedOptions.names(),
    )

    def __init__(self, **kwargs: Any) -> None:
        from lite_strategies._registry import get_strategy_spec

        get_strategy_spec(self.strategy_name).load()  # without deepspeed: the error names the pip extra
        super().__init__(**kwargs)  # checks the names: the common ones and those of DeepSpeedOptions
        names = [name for name in DeepSpeedOptions.names() if name in self._backend_kwargs]
        self._options = DeepSpeedOptions.from_kwargs({name: self._backend_kwargs.pop(name) for name in names})
        # A row's init kwargs (``deepspeed_stage_3_offload`` & co.) are the defaults of its alias class.
        row_defaults = self.spec.init_kwargs
        self._config, dtype = build_config(
            self._options,
            default_stage=row_defaults.get("stage", 2),
            default_offload_optimizer=row_defaults.get("offload_optimizer", False),
            default_offload_parameters=row_defaults.get("offload_parameters", False),
            precision=self.precision.name,
            device_type=self.devices[0].type,
        )
        self._logging_level = self._options.logging_level
        # The facade's module wrapper reads this: cast inputs to the engine's dtype, no autocast.
        self._precision = DeepSpeedPrecision(self.precision.name, self.precision.device_type, dtype)
        self._engines: list[Any] = []  # deepspeed.DeepSpeedEngine (deepspeed is imported lazily)
        self._engine_of_optimizer: dict[int, Any] = {}
        self._synced_backward: set[int] = set()  # engines with a synchronized backward since their step

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_engines"], state["_engine_of_optimizer"], state["_synced_backward"] = [], {}, set()
        return state

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the DeepSpeed config every engine of this strategy is built with."""
        return copy.deepcopy(self._config)

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage of the config (0 when it has no ``zero_optimization`` section)."""
        return int(self._config.get("zero_optimization", {}).get("stage", 0))

    # ------------------------------------------------------------------ setup
    def setup_environment(self) -> None:
        """Join the process group (lite_collectives, with this strategy's timeout), then hand it to DeepSpeed.

        On the CPU, DeepSpeed would JIT-compile a shared-memory all-reduce op with g++ (25-80 s
        on first use) that only its inference kernels call; it is skipped unless the
        environment variable ``LITE_DEEPSPEED_SHM_COMM=1`` asks for it.
        """
        super().setup_environment()
        import deepspeed
        import deepspeed.comm

        deepspeed.utils.logging.logger.setLevel(self._logging_level)
        _use_deepspeed_accelerator(self.root_device.type)
        if self.root_device.type == "cpu" and os.environ.get(SHM_COMM_VAR) != "1":
            _skip_shm_comm_op()
        backend = torch.distributed.get_backend()
        # dist_init_required=False: DeepSpeed wraps the existing process group, never makes its own.
        deepspeed.comm.init_distributed(
            dist_backend=backend, dist_init_required=False, timeout=self._timeout, verbose=False
        )

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[torch.optim.Optimizer], *, move_to_device: bool = True
    ) -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        """Build a DeepSpeed engine from ``module`` and at most one optimizer; returns (engine, [its optimizer]).

        DeepSpeed converts and places the module itself (``move_to_device`` cannot keep it where
        it is). Without an optimizer the engine is for inference. The returned optimizer is
        DeepSpeed's (a ZeRO optimizer wrapping yours, or yours for stage 0 in fp32); step it
        through [`optimizer_step`][lite_strategies.DeepSpeedStrategy.optimizer_step].
        """
        if len(optimizers) > 1:
            raise StrategyError(
                f"DeepSpeed builds one engine per model with one optimizer, got {len(optimizers)} optimizers "
                "for one model; put all parameter groups in one optimizer, or set up each model "
                "with its own optimizer in separate setup() calls"
            )
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizers[0] if optimizers else None,
            config=copy.deepcopy(self._config),
            dist_init_required=False,
        )
        self._engines.append(engine)
        self._wrapped.append(weakref.ref(engine))
        if not optimizers:
            return engine, []
        self._engine_of_optimizer[id(ds_optimizer)] = engine
        return engine, [ds_optimizer]

    def setup_module(self, module: nn.Module, *, move_to_device: bool = True) -> nn.Module:
        """An engine without optimizer (inference); see [`setup_module_and_optimizers`][lite_strategies.DeepSpeedStrategy.setup_module_and_optimizers]."""
        return self.setup_module_and_optimizers(module, [], move_to_device=move_to_device)[0]

    def module_to_device(self, module: nn.Module) -> nn.Module:
        """Move a module that is not an engine's to this process's device."""
        return module.to(self.root_device)

    # ------------------------------------------------------------------ training step
    def _engine(self, module: nn.Module | None) -> Any:
        if module is None:
            if len(self._engines) != 1:
                raise StrategyError(
                    f"backward() does not know which of the {len(self._engines)} DeepSpeed engines the loss belongs "
                    "to; pass the model, e.g. lite.backward(loss, model=model)"
                )
            return self._engines[0]
        if not any(module is engine for engine in self._engines):
            raise StrategyError(
                f"backward() needs a model set up by this DeepSpeed strategy (its engine), got "
                f"{type(module).__name__}; set the model up with setup() first"
            )
        return module

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        """``engine.backward(tensor)``: DeepSpeed scales the loss (fp16) and reduces the gradients.

        Under ZeRO stages 1 and 2 a second synchronized backward before the step would replace
        the first one's reduced gradients instead of adding to them (DeepSpeed counts one
        backward per ``engine.step()`` call), so it raises instead of training on wrong gradients.
        """
        engine = self._engine(module)
        if (
            self.zero_stage in (1, 2)
            and engine.optimizer is not None
            and not getattr(engine, "inside_no_sync_ctxt", False)
        ):
            if id(engine) in self._synced_backward:
                raise StrategyError(
                    f"a second backward before optimizer.step() under DeepSpeed ZeRO stage {self.zero_stage} would "
                    "keep only the last backward's gradients; to accumulate, call optimizer.step() after every "
                    "backward and set 'gradient_accumulation_steps' in the DeepSpeed config (the engine then "
                    "steps every N calls), or run the earlier backwards inside no_backward_sync (stage 1), or "
                    "use stage 3"
                )
            self._synced_backward.add(id(engine))
        engine.backward(tensor, *args, **kwargs)

    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> Any:
        """``engine.step()`` of the engine this optimizer belongs to; a ``closure`` is called first."""
        engine = self._engine_of_optimizer.get(id(optimizer))
        if engine is None:
            raise StrategyError(
                f"optimizer_step() got {type(optimizer).__name__}, which no DeepSpeed engine of this strategy "
                "owns; step the optimizer that setup() returned"
            )
        closure = kwargs.pop("closure", None)
        if kwargs:
            raise StrategyError(f"DeepSpeed's step takes no arguments, got {sorted(kwargs)}")
        result = closure() if closure is not None else None
        engine.step()
        self._synced_backward.discard(id(engine))
        return result

    def no_backward_sync(self, module: nn.Module) -> AbstractContextManager[Any]:
        """Accumulate gradients without synchronizing, as far as each ZeRO stage allows.

        Stages 0 and 1: ``engine.no_sync()`` (gradients stay local; the next backward outside
        reduces their sum). Stage 3 reduces in every backward but adds the results up
        correctly, so this is a no-op there. Stage 2 raises: it keeps only the last
        synchronized backward's gradients and DeepSpeed cannot skip its reduction.
        """
        engine = self._engine(module)
        if self.zero_stage == 3:
            return contextlib.nullcontext()
        if self.zero_stage == 2:
            raise StrategyError(
                "DeepSpeed ZeRO stage 2 partitions gradients as they are reduced in every backward, so it cannot "
                "skip the synchronization; to accumulate gradients call optimizer.step() after every backward "
                "and set 'gradient_accumulation_steps' in the DeepSpeed config (the engine then steps every N "
                "calls), or use stage 1 or 3"
            )
        context: AbstractContextManager[Any] = engine.no_sync()
        return context

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Any,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Refused: DeepSpeed's gradients live in its partitions and it clips inside its step."""
        raise StrategyError(
            "DeepSpeed clips the gradients inside its step (they live in its ZeRO partitions, where "
            "clipping the parameters' .grad would change nothing); pass config={'gradient_clipping': "
            f"{max_norm}, ...}} to the DeepSpeed strategy instead"
        )

    def clip_gradients_value(self, module: nn.Module, optimizer: Any, clip_val: float) -> None:
        """Refused: DeepSpeed clips by norm only, inside its step (``gradient_clipping`` in the config)."""
        raise StrategyError(
            "DeepSpeed cannot clip gradients by value: it clips by norm inside its step; pass "
            "config={'gradient_clipping': <max norm>, ...} to the DeepSpeed strategy instead"
        )

    # ------------------------------------------------------------------ checkpoints
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The full state dict of an engine's module (gathered from every rank under stage 3: a collective)."""
        if not any(module is engine for engine in self._engines):
            return super().get_module_state_dict(module)
        inner: nn.Module = module.module  # type: ignore[assignment]
        if self.zero_stage < 3:
            return inner.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=None):
            return {key: value.detach().clone() for key, value in inner.state_dict().items()}

    def save_checkpoint(self, path: _PathLike, state: Any) -> None:
        """Save a state holding engines as a DeepSpeed checkpoint directory; every rank must call this.

        Each engine (a top-level value of ``state``) is saved by ``engine.save_checkpoint`` under
        ``path/<key>/`` (one file per rank with ZeRO) together with its optimizer's state
        when that optimizer is in ``state`` too; the plain values go along as client state. A
        state without engines is saved as one file, like every other strategy does.
        """
        if not holds_engines(self, state):
            super().save_checkpoint(path, state)
            return
        save_engines(self, path, state)

    def load_checkpoint(
        self, path: _PathLike, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> Any:
        """Load a DeepSpeed checkpoint directory (or, like other strategies, a single full file).

        Without ``state``: the saved plain values and each engine's consolidated fp32 state
        dict (see [`consolidate_deepspeed_checkpoint`][lite_strategies.consolidate_deepspeed_checkpoint]; optimizer states are left out).
        With ``state``: each engine in it loads its shard (and its optimizer's, when that
        optimizer is in ``state``) with ``engine.load_checkpoint``, its plain values are
        replaced, and the saved plain values it did not name are returned. A single full file
        loads into engines too (module weights only: a full optimizer state cannot be
        split into ZeRO's partitions). DeepSpeed's own files are read with
        ``weights_only=False`` whatever ``weights_only`` says: load only checkpoints you trust.
        """
        if not (Path(path) / MANIFEST).is_file():
            if Path(path).is_dir():
                raise CheckpointError(
                    f"{os.fspath(path)!r} is a directory without {MANIFEST}: not a checkpoint saved by the "
                    "deepspeed strategy"
                )
            if state is None or not any(self.is_engine(v) for v in state.values()):
                return super().load_checkpoint(path, state, weights_only=weights_only)
            return load_full_file(self, path, state, weights_only=weights_only)
        if state is None:
            return consolidate_deepspeed_checkpoint(path)
        return load_engines(self, path, state)

    def is_engine(self, value: Any) -> bool:
        """Whether ``value`` is one of the DeepSpeed engines this strategy built."""
        return any(value is engine for engine in self._engines)

    def teardown(self) -> None:
        """Drop the engines this strategy holds, then leave the process group as ParallelStrategy does."""
        self._engines.clear()
        self._engine_of_optimizer.clear()
        self._synced_backward.clear()
        super().teardown()


class DeepSpeedStage1Strategy(DeepSpeedStrategy):
    """Thin alias: [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] with the ``deepspeed_stage_1`` row's init kwargs (stage 1)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_1"


class DeepSpeedStage2Strategy(DeepSpeedStrategy):
    """Thin alias: [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] with the ``deepspeed_stage_2`` row's init kwargs (stage 2)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_2"


class DeepSpeedStage2OffloadStrategy(DeepSpeedStrategy):
    """Thin alias: [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] with the ``deepspeed_stage_2_offload`` row's init kwargs (stage 2, optimizer offloaded)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_2_offload"


class DeepSpeedStage3Strategy(DeepSpeedStrategy):
    """Thin alias: [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] with the ``deepspeed_stage_3`` row's init kwargs (stage 3)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_3"


class DeepSpeedStage3OffloadStrategy(DeepSpeedStrategy):
    """Thin alias: [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] with the ``deepspeed_stage_3_offload`` row's init kwargs (stage 3, optimizer and parameters offloaded)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_3_offload"


# ---------------------------------------------------------------------- process setup
def _use_deepspeed_accelerator(device_type: str) -> None:
    """Make DeepSpeed's global accelerator the one this strategy runs on (it picks CUDA when it sees one)."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    current = get_accelerator().device_name()
    if current == device_type:
        return
    if device_type == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
        return
    raise StrategyError(
        f"DeepSpeed selected its {current!r} accelerator but this strategy runs on {device_type!r}; "
        f"unset DS_ACCELERATOR or choose accelerator={current!r}"
    )


def _skip_shm_comm_op() -> None:
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    # DeepSpeed builds the op only when this table says it is compatible; it documents the
    # table as one dict kept for the process, so marking the op off here lasts.
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
