"""Accelerators as a registry of specs: cpu, cuda (``gpu``), mps, xla (``tpu``).

Probes are fork-safe where torch allows it (CUDA is counted through NVML when available) and
optional backends are looked up with ``importlib.util.find_spec`` before any import, so
asking about cpu or cuda never imports ``torch_xla``.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from lite_devices._errors import DeviceError


def _count_cpu() -> int:
    return 1


def _count_cuda() -> int:
    # device_count() asks NVML first and does not initialise CUDA, so a later fork still works;
    # torch.cuda.is_available() would.
    return torch.cuda.device_count() if torch.backends.cuda.is_built() else 0


def _count_mps() -> int:
    return 1 if torch.backends.mps.is_available() else 0


def _count_xla() -> int:
    # Only reached when find_spec("torch_xla") succeeded (AcceleratorSpec.device_count checks).
    # Never start the XLA runtime here: torch_xla's launcher refuses to start processes after it.
    pjrt_device = os.environ.get("PJRT_DEVICE", "").strip().upper()
    if pjrt_device == "CPU":
        # XLA:CPU (asked for explicitly): torch_xla makes CPU_NUM_DEVICES devices, 1 by default.
        value = os.environ.get("CPU_NUM_DEVICES", "1").strip()
        return int(value) if value.isdigit() and int(value) > 0 else 1
    if pjrt_device not in ("", "TPU") or not _has_google_pci_device():
        return 0  # no TPU chip on this host: do not import torch_xla (slow; its TPU probe asks the network)
    try:  # torch_xla >= 2.1
        tpu = importlib.import_module("torch_xla._internal.tpu")
        chips = int(tpu.num_available_chips())
        return chips * int(tpu.num_logical_cores_per_chip()) if chips else 0
    except Exception:
        return 0


def _has_google_pci_device() -> bool:
    """Whether a PCI device with Google's vendor id (TPU chips have it) is attached."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == "0x1ae0":
                return True
        except OSError:
            continue
    return False


@dataclass(frozen=True)
class AcceleratorSpec:
    """One kind of accelerator: its names, its torch device type and how to count its devices.

    Nothing is probed at construction; [`is_available`][lite_devices.AcceleratorSpec.is_available] and [`device_count`][lite_devices.AcceleratorSpec.device_count] ask the
    machine each time they are called.
    """

    name: str
    aliases: tuple[str, ...]
    device_type: str
    requires: str | None
    count_devices: Callable[[], int] = field(repr=False, compare=False)

    def is_available(self) -> bool:
        """Whether this machine has at least one device of this kind."""
        return self.device_count() > 0

    def device_count(self) -> int:
        """How many devices of this kind this machine has (0 when none or the backend is missing).

        For ``cpu`` this is 1: one device, shared by however many processes run on it.
        """
        if self.requires is not None and importlib.util.find_spec(self.requires) is None:
            return 0
        return self.count_devices()

    def device(self, index: int = 0) -> torch.device:
        """The ``torch.device`` for device ``index`` (for ``cpu`` every index is the one CPU).

        Examples:
            >>> ACCELERATORS["cuda"].device(1)
            device(type='cuda', index=1)
        """
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DeviceError(
                f"{self.name}.device({index!r}): a device index must be an int >= 0, got {index!r}."
            )
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, index)

    def unavailable_reason(self) -> str:
        """Why [`is_available`][lite_devices.AcceleratorSpec.is_available] is false here, in words ('' when it is available)."""
        if self.requires is not None and importlib.util.find_spec(self.requires) is None:
            return f"it needs the module {self.requires!r}, which is not installed"
        if self.device_count() > 0:
            return ""
        if self.name == "cuda":
            if not torch.backends.cuda.is_built():
                return f"this torch build ({torch.__version__}) has no CUDA support"
            return (
                "torch.cuda.device_count() is 0 (no GPU visible; check CUDA_VISIBLE_DEVICES and the driver)"
            )
        if self.name == "mps":
            return "no MPS device (torch.backends.mps.is_available() is False; needs Apple silicon and macOS 12.3+)"
        if self.name == "xla":
            return "no TPU chip was found on this host (for XLA on the CPU, set PJRT_DEVICE=CPU)"
        return f"no {self.name} device was found"


_SPECS = (
    AcceleratorSpec("cpu", (), "cpu", None, _count_cpu),
    AcceleratorSpec("cuda", ("gpu",), "cuda", None, _count_cuda),
    AcceleratorSpec("mps", (), "mps", None, _count_mps),
    AcceleratorSpec("xla", ("tpu",), "xla", "torch_xla", _count_xla),
)

ACCELERATORS: Mapping[str, AcceleratorSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Canonical accelerator name -> spec, in the order ``auto`` prefers them (cpu last)."""

AUTO_ORDER: tuple[str, ...] = ("cuda", "mps", "xla", "cpu")
_BY_NAME = {alias: spec for spec in _SPECS for alias in (spec.name, *spec.aliases)}
ACCEPTED_NAMES: tuple[str, ...] = (*_BY_NAME, "auto")


def lookup_accelerator(name: object) -> AcceleratorSpec | None:
    """The spec for ``name`` (case-insensitive, aliases), None for 'auto'; DeviceError if unknown."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key == "auto":
        return None
    if key is None or key not in _BY_NAME:
        raise DeviceError(
            f"accelerator={name!r} is not a known accelerator. "
            f"Accepted values: {', '.join(repr(n) for n in ACCEPTED_NAMES)}."
        )
    return _BY_NAME[key]


def auto_from_counts(counts: Callable[[str], int]) -> AcceleratorSpec:
    """The first accelerator of `AUTO_ORDER` that ``counts(name)`` says has a device."""
    for name in AUTO_ORDER[:-1]:
        if counts(name) > 0:
            return ACCELERATORS[name]
    return ACCELERATORS["cpu"]


def auto_accelerator() -> AcceleratorSpec:
    """The best accelerator available here: cuda, then mps, then xla, else cpu.

    xla is considered only when ``torch_xla`` is installed and finds a device.
    """
    return auto_from_counts(lambda name: ACCELERATORS[name].device_count())


def get_accelerator(name: str) -> AcceleratorSpec:
    """The spec named ``name`` (case-insensitive; ``gpu`` -> cuda, ``tpu`` -> xla, ``auto`` -> best here).

    Does not check availability (see [`AcceleratorSpec.is_available`][lite_devices.AcceleratorSpec.is_available]).

    Examples:
        >>> get_accelerator("GPU").name
        'cuda'
    """
    spec = lookup_accelerator(name)
    return auto_accelerator() if spec is None else spec


def available_accelerators() -> tuple[str, ...]:
    """Canonical names of the accelerators available here, best first (always ends with 'cpu')."""
    return tuple(name for name in AUTO_ORDER if ACCELERATORS[name].is_available())
