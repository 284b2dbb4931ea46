"""parse_devices / select_indices: every form of ``devices``, ``gpus`` and ``tpu_cores``.

cuda, mps and xla rules run on any machine through ``device_counts`` (the inventory passed
in instead of probed); the real-machine checks are at the end.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lite_devices import ACCELERATORS, DeviceError, DeviceSelection, auto_accelerator, parse_devices
from lite_devices._parse import select_indices

CPU = torch.device("cpu")
FOUR_GPUS = {"cuda": 4}


def cuda(*indices: int) -> tuple[torch.device, ...]:
    return tuple(torch.device("cuda", i) for i in indices)


# (devices, accelerator, device_counts) -> (accelerator, indices)
VALID = [
    # cpu: a number of processes
    (None, "cpu", None, "cpu", (0,)),
    (0, "cpu", None, "cpu", (0,)),
    ("0", "cpu", None, "cpu", (0,)),
    ("auto", "cpu", None, "cpu", (0,)),
    (1, "cpu", None, "cpu", (0,)),
    (3, "cpu", None, "cpu", (0, 1, 2)),
    ("3", "cpu", None, "cpu", (0, 1, 2)),
    (" 2 ", "CPU", None, "cpu", (0, 1)),
    # cuda / gpu with four devices
    (None, "gpu", FOUR_GPUS, "cuda", (0,)),
    (1, "cuda", FOUR_GPUS, "cuda", (0,)),
    (2, "gpu", FOUR_GPUS, "cuda", (0, 1)),
    (4, "gpu", FOUR_GPUS, "cuda", (0, 1, 2, 3)),
    ("2", "gpu", FOUR_GPUS, "cuda", (0, 1)),
    (-1, "gpu", FOUR_GPUS, "cuda", (0, 1, 2, 3)),
    ("-1", "gpu", FOUR_GPUS, "cuda", (0, 1, 2, 3)),
    ("auto", "gpu", FOUR_GPUS, "cuda", (0, 1, 2, 3)),
    ([1, 3], "gpu", FOUR_GPUS, "cuda", (1, 3)),
    ([3, 1], "gpu", FOUR_GPUS, "cuda", (3, 1)),
    ((2,), "gpu", FOUR_GPUS, "cuda", (2,)),
    ("1, 3", "gpu", FOUR_GPUS, "cuda", (1, 3)),
    ("1,3", "gpu", FOUR_GPUS, "cuda", (1, 3)),
    ("0,", "gpu", FOUR_GPUS, "cuda", (0,)),
    ("3,", "gpu", FOUR_GPUS, "cuda", (3,)),
    # mps (one device) and xla / tpu
    (None, "mps", {"mps": 1}, "mps", (0,)),
    (-1, "mps", {"mps": 1}, "mps", (0,)),
    (8, "tpu", {"xla": 8}, "xla", tuple(range(8))),
    ("auto", "xla", {"xla": 8}, "xla", tuple(range(8))),
    ([5], "TPU", {"xla": 8}, "xla", (5,)),
    # auto: cuda, then mps, then xla, else cpu
    (None, "auto", {"cuda": 2, "mps": 1, "xla": 8}, "cuda", (0,)),
    ("auto", "auto", {"cuda": 2}, "cuda", (0, 1)),
    (None, "auto", {"mps": 1, "xla": 8}, "mps", (0,)),
    (-1, "auto", {"xla": 8}, "xla", tuple(range(8))),
    (2, "auto", {}, "cpu", (0, 1)),
    ("auto", "auto", {}, "cpu", (0,)),
    (0, "auto", {"cuda": 2}, "cpu", (0,)),  # the spec: devices=0 means the CPU
]


@pytest.mark.parametrize(("devices", "accelerator", "counts", "expected_acc", "expected"), VALID)
def test_valid_forms(devices, accelerator, counts, expected_acc, expected):
    sel = parse_devices(devices, accelerator, device_counts=counts if counts is not None else {})
    assert sel.accelerator == expected_acc
    assert sel.indices == expected
    assert sel.num_devices == len(expected)
    assert sel.devices == tuple(ACCELERATORS[expected_acc].device(i) for i in expected)


# (devices, accelerator, device_counts, words the message must contain)
INVALID = [
    # cpu takes a number of processes
    (-1, "cpu", {}, ["devices=-1", "int number of processes"]),
    ("-1", "cpu", {}, ["int number of processes"]),
    (-2, "cpu", {}, ["int number of processes"]),
    ([0, 1], "cpu", {}, ["devices=[0, 1]", "int number of processes"]),
    ("0, 1", "cpu", {}, ["int number of processes"]),
    # out of range, duplicates, zero, negative
    (5, "gpu", FOUR_GPUS, ["devices=5", "has 4", "1..4"]),
    ([4], "gpu", FOUR_GPUS, ["[4]", "out of range", "0..3"]),
    ([-1], "gpu", FOUR_GPUS, ["out of range"]),
    ("1, 9", "gpu", FOUR_GPUS, ["[9]", "out of range"]),
    ([1, 1], "gpu", FOUR_GPUS, ["[1]", "more than once"]),
    ("2, 0, 2", "gpu", FOUR_GPUS, ["[2]", "more than once"]),
    (0, "gpu", FOUR_GPUS, ["0 selects no cuda device", "accelerator='cpu'"]),
    ("0", "gpu", FOUR_GPUS, ["0 selects no cuda device"]),
    ([], "gpu", FOUR_GPUS, ["empty list"]),
    (-2, "gpu", FOUR_GPUS, ["-2 is negative", "-1"]),
    ("-3", "gpu", FOUR_GPUS, ["negative"]),
    # garbage
    ("two", "gpu", FOUR_GPUS, ["'two'", "Accepted strings"]),
    ("", "cpu", {}, ["Accepted strings"]),
    ("1,,2", "gpu", FOUR_GPUS, ["Accepted strings"]),
    ("1.5", "gpu", FOUR_GPUS, ["Accepted strings"]),
    (",", "gpu", FOUR_GPUS, ["Accepted strings"]),
    ("[1, 2]", "gpu", FOUR_GPUS, ["Accepted strings"]),
    (1.0, "gpu", FOUR_GPUS, ["float", "not supported"]),
    ({0: 1}, "gpu", FOUR_GPUS, ["dict", "not supported"]),
    ([0, "1"], "gpu", FOUR_GPUS, ["contains ['1']"]),
    ([0.0], "gpu", FOUR_GPUS, ["contains [0.0]"]),
    # bools are not ints here
    (True, "cpu", {}, ["bool", "devices=True"]),
    (False, "gpu", FOUR_GPUS, ["bool"]),
    ([True], "gpu", FOUR_GPUS, ["contains [True]"]),
    # unknown and unavailable accelerators
    (1, "npu", {}, ["'npu'", "'cpu'", "'gpu'", "'tpu'", "'auto'"]),
    (1, "", {}, ["not a known accelerator"]),
    (1, "gpu", {}, ["'cuda' is not available", "Available: 'cpu'"]),
    (1, "mps", {"cuda": 1}, ["'mps' is not available", "'cpu', 'cuda'"]),
    (8, "tpu", {}, ["'xla' is not available"]),
    ([0, 1], "auto", {}, ["auto chose 'cpu'", "int number of processes"]),
]


@pytest.mark.parametrize(("devices", "accelerator", "counts", "words"), INVALID)
def test_invalid_forms(devices, accelerator, counts, words):
    with pytest.raises(DeviceError) as info:
        parse_devices(devices, accelerator, device_counts=counts)
    for word in words:
        assert word in str(info.value)


def test_device_error_is_value_error():
    assert issubclass(DeviceError, ValueError)


# (kwargs, device_counts) -> (accelerator, indices)
SHORTHANDS = [
    ({"gpus": 2}, FOUR_GPUS, "cuda", (0, 1)),
    ({"gpus": "1, 3"}, FOUR_GPUS, "cuda", (1, 3)),
    ({"gpus": [2]}, FOUR_GPUS, "cuda", (2,)),
    ({"gpus": -1}, FOUR_GPUS, "cuda", (0, 1, 2, 3)),
    ({"gpus": 2, "accelerator": "gpu"}, FOUR_GPUS, "cuda", (0, 1)),
    ({"gpus": 2, "accelerator": "CUDA"}, FOUR_GPUS, "cuda", (0, 1)),
    ({"tpu_cores": 8}, {"xla": 8}, "xla", tuple(range(8))),
    ({"tpu_cores": [3]}, {"xla": 8}, "xla", (3,)),
    ({"tpu_cores": 8, "accelerator": "tpu"}, {"xla": 8}, "xla", tuple(range(8))),
]


@pytest.mark.parametrize(("kwargs", "counts", "expected_acc", "expected"), SHORTHANDS)
def test_shorthands(kwargs, counts, expected_acc, expected):
    sel = parse_devices(**kwargs, device_counts=counts)
    assert (sel.accelerator, sel.indices) == (expected_acc, expected)


SHORTHAND_ERRORS = [
    ({"gpus": 2, "devices": 2}, ["gpus=2", "devices=2", "pass one"]),
    ({"gpus": 2, "accelerator": "cpu"}, ["gpus=2", "accelerator='cpu'"]),
    ({"gpus": 2, "accelerator": "tpu"}, ["gpus=2", "accelerator='tpu'"]),
    ({"tpu_cores": 8, "accelerator": "gpu"}, ["tpu_cores=8", "accelerator='gpu'"]),
    ({"tpu_cores": 8, "devices": "auto"}, ["tpu_cores=8", "devices='auto'"]),
    ({"gpus": 1, "tpu_cores": 8}, ["gpus=1", "tpu_cores=8"]),
    ({"gpus": 0}, ["gpus=0", "0 selects no cuda device"]),
    ({"gpus": 5}, ["gpus=5", "has 4"]),
    ({"gpus": True}, ["gpus=True", "bool"]),
    ({"tpu_cores": 8}, ["tpu_cores=8", "'xla' is not available"]),
]


@pytest.mark.parametrize(("kwargs", "words"), SHORTHAND_ERRORS)
def test_shorthand_errors(kwargs, words):
    with pytest.raises(DeviceError) as info:
        parse_devices(**kwargs, device_counts=FOUR_GPUS)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "counts", [{"gpu": 1}, {"cuda": -1}, {"cuda": True}, {"cuda": 1.0}], ids=["alias", "neg", "bool", "float"]
)
def test_bad_device_counts(counts):
    with pytest.raises(DeviceError, match="device_counts"):
        parse_devices(device_counts=counts)


def test_accelerator_spec_instance_is_accepted():
    sel = parse_devices("1,", ACCELERATORS["cuda"], device_counts={"cuda": 2})
    assert sel.devices == cuda(1)


@pytest.mark.parametrize(
    ("devices", "count", "expected"),
    [(None, 1, (0,)), ("auto", 3, (0, 1, 2)), (-1, 2, (0, 1)), (2, 2, (0, 1)), ([1, 0], 2, (1, 0))],
)
def test_select_indices_is_pure(devices, count, expected):
    assert select_indices(devices, "cuda", count) == expected


def test_select_indices_no_device():
    with pytest.raises(DeviceError, match="no cuda device is available"):
        select_indices(None, "cuda", 0)


@pytest.mark.parametrize(
    ("accelerator", "devices", "indices"),
    [("npu", (CPU,), (0,)), ("cpu", (), ()), ("cpu", (CPU,), (0, 1))],
)
def test_device_selection_validates(accelerator, devices, indices):
    with pytest.raises(DeviceError):
        DeviceSelection(accelerator, devices, indices)


# --- on this machine, probed for real -------------------------------------------------


def test_defaults_pick_the_best_accelerator_here():
    sel = parse_devices()
    best = auto_accelerator()
    assert sel.accelerator == best.name
    assert sel.devices == (best.device(0),)


@pytest.mark.parametrize("devices", [None, 0, 1, 2, "2", "auto"])
def test_cpu_for_real(devices):
    sel = parse_devices(devices, "cpu")
    assert sel.accelerator == "cpu"
    assert set(sel.devices) == {CPU}


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize(
    "kwargs", [{"accelerator": "gpu"}, {"accelerator": "cuda", "devices": 1}, {"gpus": 1}]
)
def test_no_cuda_here_is_a_clear_error(kwargs):
    with pytest.raises(DeviceError, match=r"'cuda' is not available here: .*(CUDA|GPU)"):
        parse_devices(**kwargs)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_no_mps_here_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"'mps' is not available here: .*MPS"):
        parse_devices(accelerator="mps")


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here")
def test_no_tpu_without_torch_xla():
    for kwargs in ({"accelerator": "tpu"}, {"tpu_cores": 8}):
        with pytest.raises(DeviceError, match="needs the module 'torch_xla'"):
            parse_devices(**kwargs)
