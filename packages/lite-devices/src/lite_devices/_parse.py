"""Parsing ``devices`` / ``gpus`` / ``tpu_cores`` into a [`DeviceSelection`][lite_devices.DeviceSelection].

`select_indices` is the whole rule set as a pure function of the device count, so it
is tested for cuda, mps and xla on a machine that has none of them; [`parse_devices`][lite_devices.parse_devices]
adds the accelerator lookup and the availability check.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch

from lite_devices._errors import DeviceError
from lite_devices._registry import ACCELERATORS, AcceleratorSpec, auto_from_counts, lookup_accelerator

DevicesSpec: TypeAlias = int | str | Sequence[int] | None
"""Every form ``devices`` may take: None, an int, a string, or a list/tuple of indices."""

_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class DeviceSelection:
    """The devices this run uses: one per process.

    ``indices`` are the device indices (for cpu, the process indices 0..n-1); ``devices``
    the matching ``torch.device`` objects.
    """

    accelerator: str
    devices: tuple[torch.device, ...]
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise DeviceError(
                f"DeviceSelection(accelerator={self.accelerator!r}): expected a canonical name, "
                f"one of {', '.join(map(repr, ACCELERATORS))}."
            )
        if not self.devices or len(self.devices) != len(self.indices):
            raise DeviceError(
                f"DeviceSelection needs at least one device and one index per device, got "
                f"devices={self.devices!r}, indices={self.indices!r}."
            )

    @property
    def num_devices(self) -> int:
        """How many devices (processes) were selected."""
        return len(self.devices)


def _accepted(accelerator: str, count: int) -> str:
    if accelerator == "cpu":
        return (
            "for cpu, devices is a number of processes: None, 'auto', 0 or 1 (one process), "
            "or an int n >= 1 (also as a string, e.g. '4')"
        )
    last = f"0..{count - 1}" if count > 0 else "none here"
    return (
        f"for {accelerator}, devices is None (device 0), 'auto', -1 or '-1' (all {count}), "
        f"an int n in 1..{max(count, 1)} (the first n), or distinct indices in {last} "
        "as a list or a string like '1, 4'"
    )


def normalize_devices(devices: object, asked: str) -> int | str | list[int] | None:
    """``devices`` as None, 'auto', an int or a list of ints; DeviceError for anything else."""
    if devices is None:
        return None
    if isinstance(devices, bool):
        raise DeviceError(
            f"{asked}: a bool is not a devices value (True/False would silently mean 1/0). "
            "Pass an int, a list of indices, 'auto' or None."
        )
    if isinstance(devices, numbers.Integral):
        return int(devices)
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return "auto"
        if _INT.fullmatch(text):
            return int(text)
        parts = [p.strip() for p in text.split(",")]
        if len(parts) > 1 and parts[-1] == "":  # "1," is the one-element list [1]
            parts.pop()
        if (len(parts) > 1 or text.endswith(",")) and all(_INT.fullmatch(p) for p in parts):
            return [int(p) for p in parts]
        raise DeviceError(
            f"{asked}: the string {devices!r} is not a devices value. Accepted strings: 'auto', "
            "an int such as '2' or '-1', or comma-separated indices such as '1, 4' or '0,'."
        )
    if isinstance(devices, (list, tuple, range)):
        bad = [d for d in devices if isinstance(d, bool) or not isinstance(d, numbers.Integral)]
        if bad:
            raise DeviceError(
                f"{asked}: a list of devices holds device indices (ints), but it contains {bad!r}."
            )
        return [int(d) for d in devices]
    raise DeviceError(
        f"{asked}: devices of type {type(devices).__name__} is not supported. "
        "Pass None, an int, a list of ints, or a string such as 'auto', '2', '-1' or '1, 4'."
    )


def select_indices(
    devices: object, accelerator: str, count: int, *, asked: str | None = None
) -> tuple[int, ...]:
    """The device indices that ``devices`` selects on ``accelerator`` when it has ``count`` devices.

    Pure: nothing is probed. ``accelerator`` is a canonical name; ``asked`` is how the request
    is named in error messages (default: ``devices=..., accelerator=...``).

    Examples:
        >>> select_indices("1, 3", "cuda", 4)
        (1, 3)
    """
    asked = asked or f"devices={devices!r} with accelerator={accelerator!r}"
    value = normalize_devices(devices, asked)
    accepted = _accepted(accelerator, count)
    if accelerator == "cpu":
        if value is None or value == "auto" or value == 0:
            return (0,)
        if isinstance(value, list):
            raise DeviceError(
                f"{asked}: cpu has no device indices to pick from; use an int number of processes. "
                f"Accepted: {accepted}."
            )
        assert isinstance(value, int)
        if value < 0:
            raise DeviceError(
                f"{asked}: cpu has no 'all devices' ({value} is not a number of processes); "
                f"use an int number of processes. Accepted: {accepted}."
            )
        return tuple(range(value))

    if count <= 0:
        raise DeviceError(f"{asked}: no {accelerator} device is available here. Accepted: {accepted}.")
    if value is None:
        return (0,)
    if value == "auto" or value == -1:
        return tuple(range(count))
    if isinstance(value, int):
        if value == 0:
            raise DeviceError(
                f"{asked}: 0 selects no {accelerator} device, but at least one is needed "
                f"(to run on the CPU, use accelerator='cpu'). Accepted: {accepted}."
            )
        if value < 0:
            raise DeviceError(
                f"{asked}: {value} is negative and only -1 (all devices) is. Accepted: {accepted}."
            )
        if value > count:
            raise DeviceError(
                f"{asked}: {value} {accelerator} devices were asked for but this machine has {count}. "
                f"Accepted: {accepted}."
            )
        return tuple(range(value))
    assert isinstance(value, list)
    if not value:
        raise DeviceError(f"{asked}: an empty list selects no device. Accepted: {accepted}.")
    out_of_range = [i for i in value if not 0 <= i < count]
    if out_of_range:
        raise DeviceError(
            f"{asked}: index {out_of_range} out of range, this machine has {count} {accelerator} "
            f"device(s). Accepted: {accepted}."
        )
    duplicates = sorted({i for i in value if value.count(i) > 1})
    if duplicates:
        raise DeviceError(f"{asked}: index {duplicates} given more than once. Accepted: {accepted}.")
    return tuple(value)


def _check_counts(device_counts: Mapping[str, int]) -> None:
    """Validate an injected inventory."""
    unknown = [k for k in device_counts if k not in ACCELERATORS]
    bad = {k: v for k, v in device_counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if unknown or bad:
        raise DeviceError(
            f"device_counts={dict(device_counts)!r}: keys must be canonical accelerator names "
            f"({', '.join(map(repr, ACCELERATORS))}) and values ints >= 0."
        )


def parse_devices(
    devices: DevicesSpec = None,
    accelerator: str | AcceleratorSpec = "auto",
    *,
    gpus: DevicesSpec = None,
    tpu_cores: DevicesSpec = None,
    device_counts: Mapping[str, int] | None = None,
) -> DeviceSelection:
    """Resolve the ``devices`` / ``accelerator`` flags (and the ``gpus`` / ``tpu_cores`` shorthands).

    Args:
        devices: None (one device; for cpu one process), 0 (cpu: one process; with
            ``accelerator='auto'`` it means the CPU), an int n (cpu: n processes; else the
            first n devices), -1 or '-1' (all devices), 'auto' (all available; cpu: 1),
            a list of distinct indices, or a string such as '2' or '1, 4'.
        accelerator: 'cpu', 'cuda'/'gpu', 'mps', 'xla'/'tpu' or 'auto' (case-insensitive),
            or an [`AcceleratorSpec`][lite_devices.AcceleratorSpec].
        gpus: shorthand for ``devices=gpus, accelerator='cuda'``.
        tpu_cores: shorthand for ``devices=tpu_cores, accelerator='xla'``.
        device_counts: canonical name -> device count, to decide without probing the machine
            (names left out count 0; cpu always has its one device).

    Raises:
        DeviceError: for an unknown or unavailable accelerator, and for any devices value
            that does not select at least one existing device exactly once.

    Examples:
        >>> parse_devices(2, "cpu").devices
        (device(type='cpu'), device(type='cpu'))
    """
    if device_counts is not None:
        _check_counts(device_counts)

    def count(name: str) -> int:
        if name == "cpu":
            return 1
        if device_counts is not None:
            return device_counts.get(name, 0)
        return ACCELERATORS[name].device_count()

    spec = accelerator if isinstance(accelerator, AcceleratorSpec) else lookup_accelerator(accelerator)
    shorthand = [
        (flag, value) for flag, value in (("gpus", gpus), ("tpu_cores", tpu_cores)) if value is not None
    ]
    asked = f"devices={devices!r}, accelerator={accelerator!r}"
    if len(shorthand) == 2:
        raise DeviceError(f"gpus={gpus!r} and tpu_cores={tpu_cores!r} were both given; pass at most one.")
    if shorthand:
        flag, value = shorthand[0]
        implied = "cuda" if flag == "gpus" else "xla"
        if devices is not None:
            raise DeviceError(
                f"{flag}={value!r} and devices={devices!r} were both given; {flag}=X is shorthand for "
                f"devices=X, accelerator={implied!r}: pass one of them."
            )
        if spec is not None and spec.name != implied:
            raise DeviceError(
                f"{flag}={value!r} implies accelerator={implied!r}, which conflicts with "
                f"accelerator={accelerator!r}: drop {flag} and pass devices=..., or drop the accelerator."
            )
        devices, spec, asked = value, ACCELERATORS[implied], f"{flag}={value!r}"

    if spec is None:  # 'auto'
        # the spec's "devices=0: use the CPU"
        spec = ACCELERATORS["cpu"] if normalize_devices(devices, asked) == 0 else auto_from_counts(count)
        asked = f"{asked} (auto chose {spec.name!r})"

    n = count(spec.name)
    if n <= 0:
        # With an inventory passed in, this machine may still have the device: then say where the 0 came from.
        why = spec.unavailable_reason() or (
            f"the device_counts passed in list no {spec.name} device"
            if device_counts is not None
            else f"no {spec.name} device was found"
        )
        available = [name for name in ACCELERATORS if count(name) > 0]
        raise DeviceError(
            f"{asked}: accelerator {spec.name!r} is not available here: {why}. "
            f"Available: {', '.join(map(repr, available))} (or 'auto')."
        )
    indices = select_indices(devices, spec.name, n, asked=asked)
    return DeviceSelection(spec.name, tuple(spec.device(i) for i in indices), indices)
