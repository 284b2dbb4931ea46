"""The 'deepspeed' strategies: one DeepSpeed engine per set-up model, ZeRO stages 0-3.

DeepSpeed takes over what other strategies leave to the precision plugin and the optimizer:
it converts the model (bf16/fp16), keeps fp32 master weights in its own optimizer, scales
the loss, reduces the gradients and steps. So this strategy builds a DeepSpeed config from
its arguments and the precision flag, hands model and optimizer to ``deepspeed.initialize``
on the process group lite_collectives created, and routes backward and step to the engine.
``deepspeed`` is imported only inside the methods that need it.
"""

# lite: allow-long-module: split pending (issue 14 item 5)
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lite_precision import Precision
from lite_strategies._errors import CheckpointError, StrategyError
from lite_strategies._strategy import ParallelStrategy

_PathLike = str | os.PathLike[str]

#: canonical precision -> the DeepSpeed config section that turns it on (None: fp32).
_PRECISION_SECTIONS: Mapping[str, str | None] = {
    "32-true": None,
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
    "16-mixed": "fp16",
    "16-true": "fp16",
}
_SECTION_DTYPES = {None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OFFLOAD_DEVICES = ("cpu", "nvme")
#: Written next to the engines' directories: which keys are engines, which optimizers go with them.
_MANIFEST = "lite_deepspeed.json"
#: Set to "1" to let DeepSpeed JIT-build its shared-memory all-reduce op on the CPU (see setup_environment).
SHM_COMM_VAR = "LITE_DEEPSPEED_SHM_COMM"
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")


class DeepSpeedPrecision(Precision):
    """What the facade's module wrapper does around a DeepSpeed engine's forward.

    DeepSpeed converts the model itself (bf16/fp16 parameters with fp32 master weights in its
    optimizer) and runs no autocast, so the forward only casts floating inputs to the
    engine's dtype and floating outputs back to the default dtype (float32), so that a loss
    computed outside the model is float32. Backward and step go through the engine, never here.
    """

    has_forward_context = False
    uses_scaler = False

    def __init__(self, name: str, device_type: str, dtype: torch.dtype) -> None:
        # No device check: the strategy checked what DeepSpeed can run at construction.
        self.name = name
        self.device_type = device_type
        self.dtype = dtype
        self.converts_inputs = self.converts_outputs = dtype is not torch.float32

    def convert_input(self, data: Any) -> Any:
        return _cast_floating(data, self.dtype) if self.converts_inputs else data

    def convert_output(self, data: Any) -> Any:
        return _cast_floating(data, torch.get_default_dtype()) if self.converts_outputs else data


def _cast_floating(data: Any, dtype: torch.dtype) -> Any:
    return tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, data)


class DeepSpeedStrategy(ParallelStrategy):
    """DeepSpeed ZeRO: one engine per model (``deepspeed.initialize``), one process per device.

    Args:
        stage: ZeRO stage: 0 (off; plain data parallel), 1 (optimizer states sharded),
            2 (and gradients; the default), 3 (and parameters).
        config: a DeepSpeed config (https://www.deepspeed.ai/docs/config-json/) as a dict or a
            path to a JSON file. When given, it is used as it is, except that what it leaves out
            is filled in: batch sizes (``train_micro_batch_size_per_gpu`` 1, ``gradient_accumulation_steps``
            1), ``gradient_clipping`` 0 (DeepSpeed 0.19 clips at 1.0 by default, which a plain
            PyTorch loop never asked for), ``zero_allow_untested_optimizer``, and the precision
            section from the precision flag. The stage and offload arguments are then ignored.
        offload_optimizer: keep the optimizer states (and its step) on ``offload_optimizer_device``.
        offload_parameters: with stage 3, keep the parameters on ``offload_params_device``.
        offload_optimizer_device: ``"cpu"`` or ``"nvme"`` (needs ``nvme_path``).
        offload_params_device: ``"cpu"`` or ``"nvme"`` (needs ``nvme_path``).
        nvme_path: directory on an NVMe drive for ``"nvme"`` offloading.
        pin_memory: pin the offloaded CPU memory (CUDA only).
        zero_allow_untested_optimizer: allow torch optimizers DeepSpeed has not tested with ZeRO
            (e.g. SGD); True by default, as in Lightning.
        logging_batch_size_per_gpu: ``train_micro_batch_size_per_gpu`` of the built config; DeepSpeed
            only uses it for its throughput logs (your DataLoader decides the real batch size).
        contiguous_gradients: ZeRO tuning knob (``zero_optimization``); None: DeepSpeed's default.
        overlap_comm: ZeRO tuning knob, as above.
        allgather_bucket_size: ZeRO tuning knob, as above.
        reduce_bucket_size: ZeRO tuning knob, as above.
        sub_group_size: ZeRO tuning knob, as above.
        loss_scale: fp16 loss scale; 0 (the default): dynamic scaling.
        initial_scale_power: fp16 dynamic scaler: the first scale is 2**initial_scale_power.
        loss_scale_window: fp16 dynamic scaler: steps without overflow before the scale grows.
        hysteresis: fp16 dynamic scaler: overflows tolerated before the scale shrinks.
        min_loss_scale: fp16 dynamic scaler: the lowest scale.
        logging_level: level of DeepSpeed's logger in each process.

    ``process_group_backend`` and ``timeout`` (keyword arguments) are those of
    :class:`ParallelStrategy`; DeepSpeed uses the process group this strategy creates.

    Raises:
        StrategyError: at construction, for a bad stage, offload setting or config, and for a
            precision DeepSpeed cannot run on the device (``"64-true"`` anywhere; float16 on a
            CPU without float16 kernels).
    """

    strategy_name: ClassVar[str] = "deepspeed"
    accepted_kwargs: ClassVar[tuple[str, ...]] = (
        *ParallelStrategy.accepted_kwargs,
        "stage",
        "config",
        "offload_optimizer",
        "offload_parameters",
        "offload_optimizer_device",
        "offload_params_device",
        "nvme_path",
        "pin_memory",
        "zero_allow_untested_optimizer",
        "logging_batch_size_per_gpu",
        "contiguous_gradients",
        "overlap_comm",
        "allgather_bucket_size",
        "reduce_bucket_size",
        "sub_group_size",
        "loss_scale",
        "initial_scale_power",
        "loss_scale_window",
        "hysteresis",
        "min_loss_scale",
        "logging_level",
    )

    def __init__(
        self,
        *,
        stage: int | None = None,
        config: _PathLike | dict[str, Any] | None = None,
        offload_optimizer: bool | None = None,
        offload_parameters: bool | None = None,
        offload_optimizer_device: str = "cpu",
        offload_params_device: str = "cpu",
        nvme_path: str | None = None,
        pin_memory: bool = False,
        zero_allow_untested_optimizer: bool = True,
        logging_batch_size_per_gpu: int = 1,
        contiguous_gradients: bool | None = None,
        overlap_comm: bool | None = None,
        allgather_bucket_size: int | None = None,
        reduce_bucket_size: int | None = None,
        sub_group_size: int | None = None,
        loss_scale: float = 0.0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: float = 1.0,
        logging_level: int = logging.WARNING,
        **kwargs: Any,
    ) -> None:
        from lite_strategies._registry import get_strategy_spec

        row = get_strategy_spec(self.strategy_name)
        row.load()  # without deepspeed: the error names the pip extra
        # A row's init kwargs (``deepspeed_stage_3_offload`` & co.) are the defaults of an alias class.
        stage = row.init_kwargs.get("stage", 2) if stage is None else stage
        if offload_optimizer is None:
            offload_optimizer = row.init_kwargs.get("offload_optimizer", False)
        if offload_parameters is None:
            offload_parameters = row.init_kwargs.get("offload_parameters", False)
        options = dict(
            stage=stage,
            config=config,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            offload_optimizer_device=offload_optimizer_device,
            offload_params_device=offload_params_device,
            nvme_path=nvme_path,
            pin_memory=pin_memory,
            zero_allow_untested_optimizer=zero_allow_untested_optimizer,
            logging_batch_size_per_gpu=logging_batch_size_per_gpu,
            contiguous_gradients=contiguous_gradients,
            overlap_comm=overlap_comm,
            allgather_bucket_size=allgather_bucket_size,
            reduce_bucket_size=reduce_bucket_size,
            sub_group_size=sub_group_size,
            loss_scale=loss_scale,
            initial_scale_power=initial_scale_power,
            loss_scale_window=loss_scale_window,
            hysteresis=hysteresis,
            min_loss_scale=min_loss_scale,
            logging_level=logging_level,
        )
        super().__init__(**kwargs, **options)
        for name in options:
            self._backend_kwargs.pop(name)
        user_config = _load_config(config)
        if user_config is None:
            zero = _zero_section(
                stage=stage,
                offload_optimizer=offload_optimizer,
                offload_parameters=offload_parameters,
                offload_optimizer_device=offload_optimizer_device,
                offload_params_device=offload_params_device,
                nvme_path=nvme_path,
                pin_memory=pin_memory,
                tuning={
                    "contiguous_gradients": contiguous_gradients,
                    "overlap_comm": overlap_comm,
                    "allgather_bucket_size": allgather_bucket_size,
                    "reduce_bucket_size": reduce_bucket_size,
                    "sub_group_size": sub_group_size,
                },
            )
            user_config = {"zero_optimization": zero}
        if not isinstance(logging_batch_size_per_gpu, int) or logging_batch_size_per_gpu < 1:
            raise StrategyError(
                f"logging_batch_size_per_gpu must be an int >= 1, got {logging_batch_size_per_gpu!r}"
            )
        scaler = {
            "loss_scale": loss_scale,
            "initial_scale_power": initial_scale_power,
            "loss_scale_window": loss_scale_window,
            "hysteresis": hysteresis,
            "min_loss_scale": min_loss_scale,
        }
        self._config, dtype = _complete_config(
            user_config,
            precision=self.precision.name,
            device_type=self.devices[0].type,
            micro_batch_size=logging_batch_size_per_gpu,
            allow_untested_optimizer=zero_allow_untested_optimizer,
            scaler=scaler,
        )
        self._logging_level = logging_level
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
        through :meth:`optimizer_step`.
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
        """An engine without optimizer (inference); see :meth:`setup_module_and_optimizers`."""
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
        if not isinstance(state, dict) or not any(self._is_engine(v) for v in _walk(state)):
            super().save_checkpoint(path, state)
            return
        engines, optimizers, plain = self._split_state(state, "save")
        directory = Path(path)
        if directory.is_file():
            raise CheckpointError(
                f"{os.fspath(path)!r} is a file, but a DeepSpeed checkpoint is a directory; choose another path"
            )
        client_state = {"lite": self._convert_state(plain)}
        for key, engine in engines.items():
            engine.save_checkpoint(os.fspath(directory), tag=key, client_state=client_state)
        if self.is_global_zero:
            manifest = {"engines": sorted(engines), "optimizers": optimizers, "zero_stage": self.zero_stage}
            tmp = directory / f".{_MANIFEST}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, directory / _MANIFEST)
        self.barrier("save_checkpoint")

    def load_checkpoint(
        self, path: _PathLike, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> Any:
        """Load a DeepSpeed checkpoint directory (or, like other strategies, a single full file).

        Without ``state``: the saved plain values and each engine's consolidated fp32 state
        dict (see :func:`consolidate_deepspeed_checkpoint`; optimizer states are left out).
        With ``state``: each engine in it loads its shard (and its optimizer's, when that
        optimizer is in ``state``) with ``engine.load_checkpoint``, its plain values are
        replaced, and the saved plain values it did not name are returned. A single full file
        loads into engines too (module weights only: a full optimizer state cannot be
        split into ZeRO's partitions). DeepSpeed's own files are read with
        ``weights_only=False`` whatever ``weights_only`` says: load only checkpoints you trust.
        """
        manifest_path = Path(path) / _MANIFEST
        if not manifest_path.is_file():
            if Path(path).is_dir():
                raise CheckpointError(
                    f"{os.fspath(path)!r} is a directory without {_MANIFEST}: not a checkpoint saved by the "
                    "deepspeed strategy"
                )
            return self._load_full_file(path, state, weights_only=weights_only)
        if state is None:
            return consolidate_deepspeed_checkpoint(path)
        manifest = json.loads(manifest_path.read_text())
        engines, optimizers, plain = self._split_state(state, "load")
        saved = _saved_plain_values(Path(path), manifest)
        missing = sorted(
            [k for k in engines if k not in manifest["engines"]]
            + [k for k in optimizers if k not in manifest["optimizers"]]
            + [k for k in plain if k not in saved]
        )
        if missing:
            raise CheckpointError(
                f"{os.fspath(path)!r} has no entries {missing} that the state to load asks for; it has "
                f"{sorted([*manifest['engines'], *manifest['optimizers'], *saved])}"
            )
        for key, engine in engines.items():
            load_path, _ = engine.load_checkpoint(
                os.fspath(path),
                tag=key,
                load_optimizer_states=key in optimizers.values(),
                load_lr_scheduler_states=False,
            )
            if load_path is None:
                raise CheckpointError(f"{os.fspath(path)!r}: DeepSpeed found no checkpoint under tag {key!r}")
        for key in plain:
            state[key] = saved.pop(key)
        return saved

    def _load_full_file(self, path: _PathLike, state: dict[str, Any] | None, *, weights_only: bool) -> Any:
        if state is None or not any(self._is_engine(v) for v in state.values()):
            return super().load_checkpoint(path, state, weights_only=weights_only)
        engines, optimizers, _ = self._split_state(state, "load")
        if optimizers:
            raise CheckpointError(
                f"{os.fspath(path)!r} is a full (single-file) checkpoint: its optimizer state cannot be split into "
                f"DeepSpeed's ZeRO partitions; leave the optimizers {sorted(optimizers)} out of the state to load "
                "the weights only"
            )
        checkpoint = self.checkpoint_io.load_checkpoint(path, map_location="cpu", weights_only=weights_only)
        others = {key: value for key, value in state.items() if key not in engines}
        rest = self._restore_state(path, checkpoint, others)
        state.update(others)
        missing = sorted(set(engines) - set(checkpoint))
        if missing:
            raise CheckpointError(
                f"{os.fspath(path)!r} has no entries {missing}; it has {sorted(checkpoint)}"
            )
        for key, engine in engines.items():
            rest.pop(key, None)
            self._load_full_weights(engine, checkpoint[key])
        return rest

    def _load_full_weights(self, engine: Any, state_dict: dict[str, Any]) -> None:
        inner: nn.Module = engine.module
        if self.zero_stage >= 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=0):
                if self.is_global_zero:
                    inner.load_state_dict(state_dict)
        else:
            inner.load_state_dict(state_dict)
        # ZeRO optimizers keep fp32 master copies: refresh them from the loaded weights.
        refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
        if refresh is not None:
            refresh()

    def _is_engine(self, value: Any) -> bool:
        return any(value is engine for engine in self._engines)

    def _split_state(
        self, state: dict[str, Any], action: str
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
        """(engines by key, optimizer key -> its engine's key, the plain values) of a top-level state."""
        engines: dict[str, Any] = {}
        optimizer_engines: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for key, value in state.items():
            if self._is_engine(value):
                if not isinstance(key, str) or not _TAG.match(key):
                    raise CheckpointError(
                        f"the key {key!r} of a DeepSpeed engine names its checkpoint directory: use letters, digits, "
                        "'_', '-' or '.'"
                    )
                engines[key] = value
            elif id(value) in self._engine_of_optimizer:
                optimizer_engines[key] = self._engine_of_optimizer[id(value)]
            elif isinstance(value, (dict, list, tuple)) and any(
                self._is_engine(v) or id(v) in self._engine_of_optimizer for v in _walk(value)
            ):
                raise CheckpointError(
                    f"cannot {action} the DeepSpeed engine or optimizer nested under {key!r}: put engines and their "
                    "optimizers at the top level of the state, e.g. {'model': model, 'optimizer': optimizer}"
                )
            else:
                plain[key] = value
        optimizers: dict[str, str] = {}
        for key, owner in optimizer_engines.items():
            owner_key = next((k for k, engine in engines.items() if engine is owner), None)
            if owner_key is None:
                raise CheckpointError(
                    f"the optimizer {key!r} is saved and loaded with its DeepSpeed engine, which is not in the "
                    f"state; add its model to the state"
                )
            optimizers[key] = owner_key
        return engines, optimizers, plain

    def teardown(self) -> None:
        """Drop the engines this strategy holds, then leave the process group as ParallelStrategy does."""
        self._engines.clear()
        self._engine_of_optimizer.clear()
        self._synced_backward.clear()
        super().teardown()


class DeepSpeedStage1Strategy(DeepSpeedStrategy):
    """Thin alias: :class:`DeepSpeedStrategy` with the ``deepspeed_stage_1`` row's init kwargs (stage 1)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_1"


class DeepSpeedStage2Strategy(DeepSpeedStrategy):
    """Thin alias: :class:`DeepSpeedStrategy` with the ``deepspeed_stage_2`` row's init kwargs (stage 2)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_2"


class DeepSpeedStage2OffloadStrategy(DeepSpeedStrategy):
    """Thin alias: :class:`DeepSpeedStrategy` with the ``deepspeed_stage_2_offload`` row's init kwargs (stage 2, optimizer offloaded)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_2_offload"


class DeepSpeedStage3Strategy(DeepSpeedStrategy):
    """Thin alias: :class:`DeepSpeedStrategy` with the ``deepspeed_stage_3`` row's init kwargs (stage 3)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_3"


class DeepSpeedStage3OffloadStrategy(DeepSpeedStrategy):
    """Thin alias: :class:`DeepSpeedStrategy` with the ``deepspeed_stage_3_offload`` row's init kwargs (stage 3, optimizer and parameters offloaded)."""

    strategy_name: ClassVar[str] = "deepspeed_stage_3_offload"


def consolidate_deepspeed_checkpoint(path: _PathLike, output_file: _PathLike | None = None) -> dict[str, Any]:
    """One full fp32 state dict per engine of a checkpoint the deepspeed strategy saved, plus its plain values.

    Reads every rank's shard in this one process (no process group needed) with
    ``deepspeed.utils.zero_to_fp32``; the result has the same keys as the state that was
    saved, minus the optimizers. With ``output_file`` it is also written there with
    ``torch.save``, a file every strategy (and ``torch.load``) can load.

    >>> state = consolidate_deepspeed_checkpoint("ckpt/", "ckpt.pt")  # doctest: +SKIP
    >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    directory = Path(path)
    manifest_path = directory / _MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{os.fspath(path)!r} has no {_MANIFEST}: not a checkpoint directory saved by the deepspeed strategy"
        )
    manifest = json.loads(manifest_path.read_text())
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    result: dict[str, Any] = {}
    for key in manifest["engines"]:
        if manifest.get("zero_stage", 0) == 0:
            saved = torch.load(_model_states_file(directory / key), map_location="cpu", weights_only=False)
            module_state = saved["module"]  # stage 0 saves the full module once
        else:
            module_state = get_fp32_state_dict_from_zero_checkpoint(os.fspath(directory), tag=key)
        result[key] = {k: v.float() if v.is_floating_point() else v for k, v in module_state.items()}
    result.update(_saved_plain_values(directory, manifest))
    if output_file is not None:
        tmp = Path(f"{os.fspath(output_file)}.tmp")
        torch.save(result, tmp)
        os.replace(tmp, output_file)
    return result


def _saved_plain_values(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The plain values saved with the engines (the same on every rank: read from rank 0's file)."""
    saved = torch.load(
        _model_states_file(directory / manifest["engines"][0]), map_location="cpu", weights_only=False
    )
    return dict(saved.get("lite", {}))


def _model_states_file(tag_dir: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).is_file():
            return tag_dir / name
    raise CheckpointError(
        f"{os.fspath(tag_dir)!r} holds no DeepSpeed model states file (is the checkpoint complete?)"
    )


def _walk(obj: Any) -> list[Any]:
    """Every value inside nested dicts, lists and tuples (the containers too)."""
    found = [obj]
    if isinstance(obj, dict):
        for value in obj.values():
            found.extend(_walk(value))
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found.extend(_walk(value))
    return found


# ---------------------------------------------------------------------- config building (pure)
def _load_config(config: _PathLike | dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if not isinstance(config, (str, os.PathLike)):
        raise StrategyError(
            f"config must be a DeepSpeed config dict or the path of a JSON file, got {type(config).__name__}"
        )
    file = Path(config)
    if not file.is_file():
        raise StrategyError(f"the DeepSpeed config file {os.fspath(config)!r} does not exist")
    try:
        loaded = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise StrategyError(
            f"the DeepSpeed config file {os.fspath(config)!r} is not valid JSON: {err}"
        ) from err
    if not isinstance(loaded, dict):
        raise StrategyError(
            f"the DeepSpeed config file {os.fspath(config)!r} holds a {type(loaded).__name__}, not a JSON object"
        )
    return loaded


def _zero_section(
    *,
    stage: Any,
    offload_optimizer: bool,
    offload_parameters: bool,
    offload_optimizer_device: str,
    offload_params_device: str,
    nvme_path: str | None,
    pin_memory: bool,
    tuning: dict[str, Any],
) -> dict[str, Any]:
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise StrategyError(f"stage must be one of 0, 1, 2, 3 (ZeRO stages), got {stage!r}")
    for name, device in (
        ("offload_optimizer_device", offload_optimizer_device),
        ("offload_params_device", offload_params_device),
    ):
        if device not in _OFFLOAD_DEVICES:
            raise StrategyError(f"{name} must be one of {list(_OFFLOAD_DEVICES)}, got {device!r}")
    if offload_optimizer and stage == 0:
        raise StrategyError("offload_optimizer needs ZeRO stage 1, 2 or 3, got stage=0")
    if offload_parameters and stage != 3:
        raise StrategyError(f"offload_parameters needs ZeRO stage 3, got stage={stage}; use stage=3")
    uses_nvme = (offload_optimizer and offload_optimizer_device == "nvme") or (
        offload_parameters and offload_params_device == "nvme"
    )
    if uses_nvme and not nvme_path:
        raise StrategyError("offloading to 'nvme' needs nvme_path, a directory on the NVMe drive")
    zero: dict[str, Any] = {"stage": stage}
    if offload_optimizer:
        zero["offload_optimizer"] = _offload(offload_optimizer_device, nvme_path, pin_memory)
    if offload_parameters:
        zero["offload_param"] = _offload(offload_params_device, nvme_path, pin_memory)
    zero.update({key: value for key, value in tuning.items() if value is not None})
    return zero


def _offload(device: str, nvme_path: str | None, pin_memory: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": pin_memory}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def _complete_config(
    config: dict[str, Any],
    *,
    precision: str,
    device_type: str,
    micro_batch_size: int,
    allow_untested_optimizer: bool,
    scaler: dict[str, Any],
) -> tuple[dict[str, Any], torch.dtype]:
    """Fill in what ``config`` leaves out; returns it with the dtype its engines compute in."""
    if precision not in _PRECISION_SECTIONS:
        raise StrategyError(
            f"DeepSpeed cannot train in precision {precision!r} (it has no float64 mode); use one of "
            f"{sorted(_PRECISION_SECTIONS)}"
        )
    config = copy.deepcopy(config)
    if "train_batch_size" not in config and "train_micro_batch_size_per_gpu" not in config:
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
    if "gradient_accumulation_steps" not in config and not (
        "train_batch_size" in config and "train_micro_batch_size_per_gpu" in config
    ):
        config["gradient_accumulation_steps"] = 1
    config.setdefault("gradient_clipping", 0.0)
    config.setdefault("zero_allow_untested_optimizer", allow_untested_optimizer)
    zero = config.get("zero_optimization", {})
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        # Offloading with the user's torch optimizer: DeepSpeed would insist on its own CPU Adam.
        config.setdefault("zero_force_ds_cpu_optimizer", False)
    enabled = [name for name in ("fp16", "bf16") if config.get(name, {}).get("enabled", False)]
    if len(enabled) > 1:
        raise StrategyError("the DeepSpeed config enables both fp16 and bf16; enable one")
    wanted = _PRECISION_SECTIONS[precision]
    if enabled and wanted is not None and enabled[0] != wanted:
        raise StrategyError(
            f"the DeepSpeed config enables {enabled[0]} but the precision flag asks for {precision!r}; "
            f"drop the config's {enabled[0]!r} section or pass the matching precision"
        )
    section = enabled[0] if enabled else wanted
    if section is not None and not enabled:
        config[section] = {"enabled": True, **(scaler if section == "fp16" else {})}
    if section == "fp16":
        reason = _fp16_unsupported_reason(device_type)
        if reason:
            raise StrategyError(
                f"DeepSpeed cannot train in float16 on {device_type!r}: {reason}; use precision='bf16-mixed' "
                "or 32"
            )
    return config, _SECTION_DTYPES[section]


def _fp16_unsupported_reason(device_type: str) -> str | None:
    if device_type != "cpu":
        return None
    try:
        # What DeepSpeed's CPU accelerator asks before it accepts an fp16 config.
        if torch.ops.mkldnn._is_mkldnn_fp16_supported():
            return None
    except (AttributeError, RuntimeError):
        pass
    return "this CPU has no float16 kernels (oneDNN reports no fp16 support)"


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
