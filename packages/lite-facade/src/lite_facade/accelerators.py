"""The accelerators ``LightningLite`` knows, from lite-devices."""

from lite_devices import ACCELERATORS, AcceleratorSpec, available_accelerators, get_accelerator

__all__ = ["ACCELERATORS", "AcceleratorSpec", "available_accelerators", "get_accelerator"]
