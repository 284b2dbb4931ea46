"""The xla accelerator where torch_xla is installed: XLA:CPU (PJRT_DEVICE=CPU) counts, nothing starts the runtime."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lite_devices import ACCELERATORS, available_accelerators, parse_devices
from lite_devices._registry import _has_google_pci_device

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch_xla") is None, reason="torch_xla is not installed"
)


@pytest.mark.parametrize(
    ("pjrt_device", "cpu_num_devices", "expected"),
    [("CPU", None, 1), ("cpu", None, 1), ("CPU", "3", 3), ("CPU", "junk", 1)],
)
def test_xla_cpu_devices_are_counted(
    monkeypatch: pytest.MonkeyPatch, pjrt_device: str, cpu_num_devices: str | None, expected: int
) -> None:
    monkeypatch.setenv("PJRT_DEVICE", pjrt_device)
    if cpu_num_devices is None:
        monkeypatch.delenv("CPU_NUM_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CPU_NUM_DEVICES", cpu_num_devices)
    xla = ACCELERATORS["xla"]
    assert (xla.device_count(), xla.is_available()) == (expected, True)
    assert available_accelerators().index("xla") < available_accelerators().index("cpu")
    selection = parse_devices(1, "tpu")
    assert (selection.accelerator, selection.devices) == ("xla", (torch.device("xla", 0),))


def _count_in_fresh_process(pjrt_device: str | None) -> str:
    code = (
        "import sys\n"
        "from lite_devices import ACCELERATORS\n"
        "print(ACCELERATORS['xla'].device_count(), 'torch_xla' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_DEVICE", "CPU_NUM_DEVICES")}
    if pjrt_device is not None:
        env["PJRT_DEVICE"] = pjrt_device
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_counting_xla_cpu_does_not_import_torch_xla() -> None:
    assert _count_in_fresh_process("CPU") == "1 False"


@pytest.mark.skipif(_has_google_pci_device(), reason="this host has a Google PCI device (a TPU?)")
def test_without_a_tpu_chip_xla_is_unavailable_and_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # The old probe asked GCE's metadata server over the network, then started the XLA runtime.
    assert _count_in_fresh_process(None) == "0 False"
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    assert "set PJRT_DEVICE=CPU" in ACCELERATORS["xla"].unavailable_reason()
