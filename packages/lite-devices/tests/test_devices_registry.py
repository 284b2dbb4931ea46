"""The accelerator registry: names, aliases, availability, devices; what importing costs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lite_devices import (
    ACCELERATORS,
    AcceleratorSpec,
    DeviceError,
    auto_accelerator,
    available_accelerators,
    get_accelerator,
)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        ("cuda", "cuda"),
        ("gpu", "cuda"),
        (" Gpu ", "cuda"),
        ("mps", "mps"),
        ("xla", "xla"),
        ("tpu", "xla"),
        ("TPU", "xla"),
    ],
)
def test_names_and_aliases(name, canonical):
    spec = get_accelerator(name)
    assert spec is ACCELERATORS[canonical]
    assert spec.name == canonical


def test_registry_shape():
    assert list(ACCELERATORS) == ["cpu", "cuda", "mps", "xla"]
    assert ACCELERATORS["cuda"].aliases == ("gpu",)
    assert ACCELERATORS["xla"].aliases == ("tpu",)
    assert ACCELERATORS["xla"].requires == "torch_xla"
    assert all(isinstance(s, AcceleratorSpec) and s.device_type == s.name for s in ACCELERATORS.values())
    with pytest.raises(TypeError):
        ACCELERATORS["npu"] = ACCELERATORS["cpu"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["npu", "ipu", "", "cuda:0", None, 1])
def test_unknown_names(name):
    with pytest.raises(DeviceError) as info:
        get_accelerator(name)
    message = str(info.value)
    assert repr(name) in message
    for accepted in ("'cpu'", "'cuda'", "'gpu'", "'mps'", "'xla'", "'tpu'", "'auto'"):
        assert accepted in message


def test_auto_is_the_best_available():
    available = available_accelerators()
    assert available[-1] == "cpu"
    assert get_accelerator("auto") is auto_accelerator() is ACCELERATORS[available[0]]
    assert get_accelerator("AUTO") is auto_accelerator()


def test_cpu_is_always_one_available_device():
    cpu = ACCELERATORS["cpu"]
    assert cpu.is_available() and cpu.device_count() == 1
    assert cpu.device(0) == cpu.device(3) == torch.device("cpu")


def test_availability_agrees_with_torch():
    assert ACCELERATORS["cuda"].device_count() == torch.cuda.device_count()
    assert ACCELERATORS["cuda"].is_available() == torch.cuda.is_available()
    assert ACCELERATORS["mps"].is_available() == torch.backends.mps.is_available()
    for spec in ACCELERATORS.values():
        assert spec.is_available() == (spec.device_count() > 0) == (spec.name in available_accelerators())
        assert (spec.unavailable_reason() == "") == spec.is_available()


@pytest.mark.parametrize(("name", "index"), [("cuda", 0), ("cuda", 3), ("mps", 0), ("xla", 1)])
def test_device_for_index(name, index):
    assert ACCELERATORS[name].device(index) == torch.device(name, index)


@pytest.mark.parametrize("index", [-1, True, 1.0, "0"])
def test_bad_device_index(index):
    with pytest.raises(DeviceError, match="int >= 0"):
        ACCELERATORS["cuda"].device(index)


_PROBE = """
import json, sys
import lite_devices as ld
ld.available_accelerators(); ld.ACCELERATORS["cuda"].device_count(); ld.parse_devices(2, "cpu")
ld.move_to_device({"x": __import__("torch").ones(1)}, "cpu")
print(json.dumps(sorted(sys.modules)))
"""


def test_import_pulls_no_other_lite_package_and_no_optional_backend():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, timeout=120
    )
    modules = json.loads(out.stdout)
    lite = {m.split(".")[0] for m in modules if m.startswith("lite_")}
    assert lite == {"lite_devices"}
    assert not [m for m in modules if m.split(".")[0] in {"torch_xla", "lightning", "pytorch_lightning"}]
