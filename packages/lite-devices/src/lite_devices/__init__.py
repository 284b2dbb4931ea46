"""lite_devices: accelerators, parsing of ``devices``, and moving collections to a device.

Depends on torch only; optional backends (``torch_xla``) are imported only when asked about.
"""

from lite_devices._errors import DeviceError
from lite_devices._move import move_to_device
from lite_devices._parse import DeviceSelection, DevicesSpec, parse_devices
from lite_devices._registry import (
    ACCELERATORS,
    AcceleratorSpec,
    auto_accelerator,
    available_accelerators,
    get_accelerator,
)

__all__ = [
    "ACCELERATORS",
    "AcceleratorSpec",
    "DeviceError",
    "DeviceSelection",
    "DevicesSpec",
    "auto_accelerator",
    "available_accelerators",
    "get_accelerator",
    "move_to_device",
    "parse_devices",
]
