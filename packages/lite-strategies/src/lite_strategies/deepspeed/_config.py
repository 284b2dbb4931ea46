"""The DeepSpeed strategy's options (one frozen dataclass) and the DeepSpeed config built from them (pure)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lite_strategies._errors import StrategyError

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
_TUNING = (
    "contiguous_gradients",
    "overlap_comm",
    "allgather_bucket_size",
    "reduce_bucket_size",
    "sub_group_size",
)
_SCALER = ("loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale")


@dataclass(frozen=True)
class DeepSpeedOptions:
    """The keyword arguments of [`DeepSpeedStrategy`][lite_strategies.DeepSpeedStrategy] beyond the common ones, checked at construction.

    Attributes:
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

    """

    stage: int | None = None
    config: _PathLike | dict[str, Any] | None = None
    offload_optimizer: bool | None = None
    offload_parameters: bool | None = None
    offload_optimizer_device: str = "cpu"
    offload_params_device: str = "cpu"
    nvme_path: str | None = None
    pin_memory: bool = False
    zero_allow_untested_optimizer: bool = True
    logging_batch_size_per_gpu: int = 1
    contiguous_gradients: bool | None = None
    overlap_comm: bool | None = None
    allgather_bucket_size: int | None = None
    reduce_bucket_size: int | None = None
    sub_group_size: int | None = None
    loss_scale: float = 0.0
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    logging_level: int = logging.WARNING

    #: field -> the types it accepts (None: also None); ``config`` is checked when it is read.
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "stage": (int,), "offload_optimizer": (bool,), "offload_parameters": (bool,),
        "offload_optimizer_device": (str,), "offload_params_device": (str,), "nvme_path": (str, os.PathLike),
        "pin_memory": (bool,), "zero_allow_untested_optimizer": (bool,), "logging_batch_size_per_gpu": (int,),
        "contiguous_gradients": (bool,), "overlap_comm": (bool,), "allgather_bucket_size": (int,),
        "reduce_bucket_size": (int,), "sub_group_size": (int,), "loss_scale": (int, float),
        "initial_scale_power": (int,), "loss_scale_window": (int,), "hysteresis": (int,),
        "min_loss_scale": (int, float), "logging_level": (int, str),
    }  # fmt: skip

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> DeepSpeedOptions:
        """The options from keyword arguments; an unknown name raises with the list of options."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise StrategyError(
                f"unknown DeepSpeed option(s) {unknown}; the options are: {', '.join(cls.names())}"
            )
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for name, types in self._TYPES.items():
            value = getattr(self, name)
            nullable = dataclasses.fields(self)[self.names().index(name)].default is None
            wrong_type = not isinstance(value, types) or (bool not in types and isinstance(value, bool))
            if (value is not None or not nullable) and wrong_type:
                if name == "stage":
                    raise StrategyError(f"stage must be one of 0, 1, 2, 3 (ZeRO stages), got {value!r}")
                accepted = " or ".join(t.__name__ for t in types) + (" or None" if nullable else "")
                raise StrategyError(
                    f"DeepSpeed option {name} must be {accepted}, got {value!r}; "
                    f"the options are: {', '.join(self.names())}"
                )
        if self.logging_batch_size_per_gpu < 1:
            raise StrategyError(
                f"logging_batch_size_per_gpu must be an int >= 1, got {self.logging_batch_size_per_gpu!r}"
            )


def build_config(
    options: DeepSpeedOptions,
    *,
    default_stage: int,
    default_offload_optimizer: bool,
    default_offload_parameters: bool,
    precision: str,
    device_type: str,
) -> tuple[dict[str, Any], torch.dtype]:
    """The DeepSpeed config of ``options`` (the user's config completed, or one built from the
    stage and offload options) and the dtype its engines compute in."""
    user_config = _load_config(options.config)
    if user_config is None:
        zero = _zero_section(
            stage=default_stage if options.stage is None else options.stage,
            offload_optimizer=default_offload_optimizer
            if options.offload_optimizer is None
            else options.offload_optimizer,
            offload_parameters=default_offload_parameters
            if options.offload_parameters is None
            else options.offload_parameters,
            offload_optimizer_device=options.offload_optimizer_device,
            offload_params_device=options.offload_params_device,
            nvme_path=options.nvme_path,
            pin_memory=options.pin_memory,
            tuning={name: getattr(options, name) for name in _TUNING},
        )
        user_config = {"zero_optimization": zero}
    return _complete_config(
        user_config,
        precision=precision,
        device_type=device_type,
        micro_batch_size=options.logging_batch_size_per_gpu,
        allow_untested_optimizer=options.zero_allow_untested_optimizer,
        scaler={name: getattr(options, name) for name in _SCALER},
    )


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
