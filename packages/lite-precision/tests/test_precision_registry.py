"""The spelling table, the errors for bad names and devices, and the LightningLite plugin names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lite_precision
from lite_precision import (
    PRECISIONS,
    BFloat16MixedPrecision,
    BFloat16Precision,
    DoublePrecision,
    DoublePrecisionPlugin,
    HalfMixedPrecision,
    HalfPrecision,
    NativeMixedPrecisionPlugin,
    Precision,
    PrecisionError,
    PrecisionPlugin,
    canonical_precision,
    get_precision,
)

CANONICAL = ["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        (64, "64-true"),
        ("64", "64-true"),
        ("64-true", "64-true"),
        (32, "32-true"),
        ("32", "32-true"),
        ("32-true", "32-true"),
        (16, "16-mixed"),
        ("16", "16-mixed"),
        ("16-mixed", "16-mixed"),
        ("bf16", "bf16-mixed"),
        ("bf16-mixed", "bf16-mixed"),
        ("16-true", "16-true"),
        ("bf16-true", "bf16-true"),
        ("BF16-Mixed", "bf16-mixed"),
        (" 32-true ", "32-true"),
        (np.int64(16), "16-mixed"),
    ],
)
def test_spellings(spelling: str | int, canonical: str) -> None:
    assert canonical_precision(spelling) == canonical


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("64-true", DoublePrecision),
        ("32-true", Precision),
        ("16-mixed", HalfMixedPrecision),
        ("bf16-mixed", BFloat16MixedPrecision),
        ("16-true", HalfPrecision),
        ("bf16-true", BFloat16Precision),
    ],
)
def test_registry_builds_each_mode(name: str, cls: type[Precision]) -> None:
    assert PRECISIONS[name] is cls
    precision = get_precision(name, "cpu")
    assert type(precision) is cls
    assert precision.name == name == cls.name
    assert precision.device_type == "cpu"
    assert cls.unsupported_reason("cpu") is None


def test_registry_is_the_canonical_list_and_read_only() -> None:
    assert list(PRECISIONS) == CANONICAL
    with pytest.raises(TypeError):
        PRECISIONS["8-true"] = Precision  # type: ignore[index]


def test_default_is_32_true_on_cpu() -> None:
    precision = get_precision()
    assert type(precision) is Precision
    assert (precision.name, precision.device_type) == ("32-true", "cpu")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("8", "not a precision lite knows"),
        (8, "not a precision lite knows"),
        ("fp16", "not a precision lite knows"),
        ("mixed", "not a precision lite knows"),
        ("", "not a precision lite knows"),
        ("transformer-engine", "Transformer Engine is not integrated"),
        ("transformer-engine-float16", "Transformer Engine is not integrated"),
        (True, r"\(bool\) is not accepted"),
        (False, r"\(bool\) is not accepted"),
        (16.0, r"\(float\) is not accepted"),
        (None, r"\(NoneType\) is not accepted"),
        (torch.float16, r"\(dtype\) is not accepted"),
    ],
)
def test_bad_spellings_raise_listing_accepted_values(value: object, match: str) -> None:
    with pytest.raises(PrecisionError, match=match) as info:
        get_precision(value)  # type: ignore[arg-type]
    message = str(info.value)
    for name in CANONICAL:
        assert name in message
    assert "'bf16'" in message
    assert isinstance(info.value, ValueError)


def test_unknown_device_type() -> None:
    with pytest.raises(PrecisionError, match=r"device_type='tpu' is not a device type.*cpu, cuda, mps, xla"):
        get_precision("32-true", "tpu")


def test_device_type_with_index_is_normalized() -> None:
    assert get_precision(32, "CUDA:1").device_type == "cuda"


@pytest.mark.parametrize(
    ("name", "device_type", "match"),
    [
        ("64-true", "mps", "MPS has no float64"),
        ("64-true", "xla", "on XLA only 32-true, bf16-mixed, bf16-true"),
        ("16-mixed", "xla", "on XLA only"),
        ("16-true", "xla", "on XLA only"),
    ],
)
def test_modes_a_device_cannot_run_fail_at_construction(name: str, device_type: str, match: str) -> None:
    assert PRECISIONS[name].unsupported_reason(device_type) is not None
    with pytest.raises(PrecisionError, match=match):
        get_precision(name, device_type)


@pytest.mark.parametrize("name", ["32-true", "bf16-mixed", "bf16-true"])
def test_xla_accepts_32_and_bf16(name: str) -> None:
    assert get_precision(name, "xla").device_type == "xla"


@pytest.mark.parametrize("name", ["bf16-mixed", "bf16-true"])
def test_bf16_on_cuda_without_bf16_support_fails_at_construction(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the GPU probe is replaced (the one thing a CPU machine cannot show); the real probe is
    # checked against torch in test_precision_cuda.py
    monkeypatch.setattr(lite_precision._devices, "cuda_bf16_supported", lambda: False)
    with pytest.raises(PrecisionError, match=r"compute capability 8\.0.*use precision='16-mixed'"):
        get_precision(name, "cuda")
    assert get_precision("16-mixed", "cuda").name == "16-mixed"


def test_bf16_on_cuda_without_any_gpu_fails() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(PrecisionError, match="bfloat16 needs a CUDA GPU"):
        get_precision("bf16", "cuda")


def test_16_mixed_on_cpu_without_float16_autocast_points_to_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite_precision._devices, "cpu_float16_autocast_supported", lambda: False)
    with pytest.raises(PrecisionError, match="use precision='bf16-mixed' on CPU"):
        get_precision(16, "cpu")


def test_this_torch_runs_float16_autocast_on_cpu() -> None:
    # torch 2.13 (the pinned version) has CPU float16 autocast and GradScaler("cpu")
    assert lite_precision._devices.cpu_float16_autocast_supported() is True
    assert get_precision(16, "cpu").uses_scaler


def test_construction_touches_no_device() -> None:
    precision = get_precision("16-mixed", "cuda")
    assert precision._scaler is None  # type: ignore[attr-defined]
    assert not torch.cuda.is_initialized()


def test_plugin_aliases() -> None:
    assert PrecisionPlugin is Precision
    assert DoublePrecisionPlugin is DoublePrecision
    assert PrecisionPlugin().name == "32-true"
    assert DoublePrecisionPlugin().name == "64-true"


@pytest.mark.parametrize(
    ("precision", "name", "dtype", "uses_scaler"),
    [
        (16, "16-mixed", torch.float16, True),
        ("16-mixed", "16-mixed", torch.float16, True),
        ("bf16", "bf16-mixed", torch.bfloat16, False),
    ],
)
def test_native_mixed_precision_plugin(
    precision: str | int, name: str, dtype: torch.dtype, uses_scaler: bool
) -> None:
    plugin = NativeMixedPrecisionPlugin(precision, "cpu")
    assert isinstance(plugin, lite_precision.MixedPrecision)
    assert (plugin.name, plugin.dtype, plugin.uses_scaler, plugin.device_type) == (
        name,
        dtype,
        uses_scaler,
        "cpu",
    )
    assert (plugin.precision, plugin.device) == (precision, "cpu")


def test_native_mixed_precision_plugin_takes_a_scaler() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    plugin = NativeMixedPrecisionPlugin(16, "cpu", scaler=scaler)
    assert plugin.scaler is scaler


@pytest.mark.parametrize("precision", [32, 64, "bf16-true"])
def test_native_mixed_precision_plugin_rejects_other_modes(precision: str | int) -> None:
    with pytest.raises(PrecisionError, match="expected 16 or 'bf16'"):
        NativeMixedPrecisionPlugin(precision, "cpu")


def test_bf16_mixed_rejects_a_scaler() -> None:
    with pytest.raises(PrecisionError, match="needs none"):
        NativeMixedPrecisionPlugin("bf16", "cpu", scaler=torch.amp.GradScaler("cpu"))
