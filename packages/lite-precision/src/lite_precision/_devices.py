"""Which precision modes each device type can run, decided without touching a device.

The checks run when a mode is constructed, in the main process, possibly before a
launcher forks: nothing here may initialize CUDA. bf16 support on CUDA is therefore read
through NVML (what ``nvidia-smi`` uses) when CUDA is not initialized yet.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import torch

from lite_precision._errors import PrecisionError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xla")

# xla: only the modes TPUs run natively are accepted for now; 64, 16-mixed and 16-true on
# XLA may be opened later once they are exercised on a real TPU.
_XLA_MODES = ("32-true", "bf16-mixed", "bf16-true")


def normalize_device_type(device_type: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``; raise for a device type this package does not know."""
    name = str(device_type).split(":", 1)[0].strip().lower()
    if name not in DEVICE_TYPES:
        raise PrecisionError(
            f"device_type={device_type!r} is not a device type lite_precision knows; "
            f"expected one of {', '.join(DEVICE_TYPES)}"
        )
    return name


def unsupported_reason(name: str, device_type: str) -> str | None:
    """Why the canonical mode ``name`` cannot run on ``device_type``, or None if it can."""
    if device_type == "cpu":
        if name == "16-mixed" and not cpu_float16_autocast_supported():
            return (
                f"torch {torch.__version__} has no float16 autocast with a GradScaler on CPU; "
                "use precision='bf16-mixed' on CPU"
            )
        return None
    if device_type == "cuda":
        if name.startswith("bf16") and not cuda_bf16_supported():
            return (
                "bfloat16 needs a CUDA GPU with compute capability 8.0 or newer (Ampere), "
                "and none was found; use precision='16-mixed'"
            )
        return None
    if device_type == "mps":
        if name == "64-true":
            return "MPS has no float64 support; use precision='32-true'"
        if name.endswith("-mixed") and not _autocast_available("mps"):
            return f"torch {torch.__version__} has no autocast for MPS; use precision='32-true' or '16-true'"
        return None
    if device_type == "xla" and name not in _XLA_MODES:
        return f"on XLA only {', '.join(_XLA_MODES)} are supported"
    return None


def check_device(name: str, device_type: str) -> None:
    """Raise PrecisionError if ``name`` cannot run on ``device_type``."""
    reason = unsupported_reason(name, device_type)
    if reason is not None:
        raise PrecisionError(f"precision={name!r} cannot run on device_type={device_type!r}: {reason}")


def _autocast_available(device_type: str) -> bool:
    is_available = getattr(torch.amp, "is_autocast_available", None)
    return bool(is_available(device_type)) if is_available is not None else False


@functools.cache
def cpu_float16_autocast_supported() -> bool:
    """Whether this torch build runs float16 autocast and ``torch.amp.GradScaler("cpu")`` on CPU.

    Older builds silently disable CPU autocast for float16 (with a warning), so the probe
    runs one tiny matmul and looks at its dtype.
    """
    if not hasattr(torch.amp, "GradScaler"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.mm(torch.ones(1, 1), torch.ones(1, 1))
    return out.dtype == torch.float16


def cuda_bf16_supported() -> bool:
    """Whether every visible CUDA GPU computes in bfloat16 natively (capability >= 8.0).

    Uses torch when CUDA is already initialized, else NVML so that a later fork stays
    possible; falls back to torch (which initializes CUDA) only if NVML cannot be read.
    """
    # device_count() asks NVML first and does not initialise CUDA, so a later fork (ddp_fork)
    # still works; torch.cuda.is_available() initialises the driver in torch 2.13 (unless
    # PYTORCH_NVML_BASED_CUDA_CHECK=1), after which a forked child cannot use CUDA.
    if not torch.backends.cuda.is_built() or torch.cuda.device_count() == 0:
        return False
    if not torch.cuda.is_initialized():
        capability = _nvml_min_capability()
        if capability is not None:
            return capability >= (8, 0)
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4 has no including_emulation
        return bool(torch.cuda.is_bf16_supported())


def _visible_nvml_indices(count: int) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    try:
        indices = [int(part) for part in visible.split(",") if part.strip()]
    except ValueError:  # UUIDs or MIG names: check every device instead
        return list(range(count))
    # CUDA stops at the first invalid index
    valid: list[int] = []
    for index in indices:
        if not 0 <= index < count:
            break
        valid.append(index)
    return valid


def _nvml_min_capability() -> tuple[int, int] | None:
    """The smallest compute capability among the visible GPUs, read through NVML; None if unreadable."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        capabilities = []
        for index in _visible_nvml_indices(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                return None
            major, minor = ctypes.c_int(), ctypes.c_int()
            if nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) != 0:
                return None
            capabilities.append((major.value, minor.value))
        return min(capabilities) if capabilities else None
    finally:
        nvml.nvmlShutdown()
