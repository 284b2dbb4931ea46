"""What each mode does to modules, inputs, outputs, and inside forward and module creation."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch

from lite_precision import Precision, get_precision

Pair = namedtuple("Pair", ["a", "b"])


class WithBuffers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("running", torch.ones(2))
        self.register_buffer("count", torch.zeros(2, dtype=torch.long))
        self.register_buffer("phase", torch.ones(2, dtype=torch.complex64))


@pytest.mark.parametrize(
    ("name", "param_dtype"),
    [
        ("64-true", torch.float64),
        ("32-true", torch.float32),
        ("16-mixed", torch.float32),
        ("bf16-mixed", torch.float32),
        ("16-true", torch.float16),
        ("bf16-true", torch.bfloat16),
    ],
)
def test_convert_module(name: str, param_dtype: torch.dtype) -> None:
    module = WithBuffers()
    assert get_precision(name).convert_module(module) is module
    assert module.linear.weight.dtype == module.linear.bias.dtype == param_dtype
    assert module.running.dtype == param_dtype
    assert module.count.dtype == torch.long
    assert module.phase.dtype == torch.complex64  # complex is never cast (would drop the imaginary part)


def _batch() -> dict[str, object]:
    return {
        "x": torch.randn(2, 3),
        "pair": Pair(torch.randn(1, dtype=torch.float64), [torch.arange(3), torch.tensor([True])]),
        "z": torch.ones(1, dtype=torch.complex64),
        "text": "unchanged",
    }


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("64-true", torch.float64),
        ("16-mixed", torch.float16),
        ("bf16-mixed", torch.bfloat16),
        ("16-true", torch.float16),
        ("bf16-true", torch.bfloat16),
    ],
)
def test_convert_input_casts_only_floating_tensors(name: str, dtype: torch.dtype) -> None:
    precision = get_precision(name)
    assert precision.converts_inputs
    batch = _batch()
    out = precision.convert_input(batch)
    assert out["x"].dtype == dtype
    assert isinstance(out["pair"], Pair)
    assert out["pair"].a.dtype == dtype
    assert out["pair"].b[0].dtype == torch.long
    assert out["pair"].b[1].dtype == torch.bool
    assert out["z"].dtype == torch.complex64
    assert out["text"] == "unchanged"
    assert batch["x"].dtype == torch.float32  # the input collection is not mutated
    torch.testing.assert_close(out["x"].float(), batch["x"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name", ["16-mixed", "bf16-mixed", "16-true", "bf16-true"])
def test_convert_output_casts_back_to_default_dtype(name: str) -> None:
    precision = get_precision(name)
    assert precision.converts_outputs
    out = precision.convert_output(
        (torch.ones(2, dtype=precision.dtype), torch.arange(2), torch.ones(1, dtype=torch.complex64))
    )
    assert [t.dtype for t in out] == [torch.float32, torch.long, torch.complex64]


def test_64_true_gives_outputs_in_the_default_dtype() -> None:
    precision = get_precision(64)
    assert precision.converts_outputs
    out = precision.convert_output((torch.ones(2, dtype=torch.float64), torch.arange(2)))
    assert [t.dtype for t in out] == [torch.float32, torch.long]


def test_32_true_is_a_no_op_with_all_flags_false() -> None:
    precision = get_precision(32)
    assert type(precision) is Precision
    assert not (
        precision.converts_inputs
        or precision.converts_outputs
        or precision.has_forward_context
        or precision.uses_scaler
    )
    batch = _batch()
    assert precision.convert_input(batch) is batch
    assert precision.convert_output(batch) is batch
    module = WithBuffers()
    assert precision.convert_module(module) is module
    assert module.linear.weight.dtype == torch.float32
    assert precision.state_dict() == {}
    precision.load_state_dict({"scale": 2.0})  # ignored: nothing to restore
    with precision.forward_context(), precision.module_init_context():
        assert torch.get_default_dtype() == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_mixed_on_cpu_runs_bf16_activations_with_fp32_parameters() -> None:
    precision = get_precision("bf16-mixed", "cpu")
    model = precision.convert_module(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    )
    seen: list[torch.dtype] = []
    for layer in model:
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with precision.forward_context():
        assert torch.is_autocast_enabled("cpu")
        out = model(precision.convert_input(torch.randn(3, 4)))
    assert seen == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert precision.convert_output(out).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_16_mixed_on_cpu_runs_float16_activations() -> None:
    precision = get_precision("16-mixed", "cpu")
    model = precision.convert_module(torch.nn.Linear(4, 2))
    with precision.forward_context():
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.float16
    assert model.weight.dtype == torch.float32


def test_64_true_is_float64_everywhere() -> None:
    precision = get_precision(64)
    model = precision.convert_module(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    )
    seen: list[torch.dtype] = []
    for layer in model:
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with precision.forward_context():
        created_inside = torch.zeros(1)
        out = model(precision.convert_input(torch.randn(3, 4)))
    out = precision.convert_output(out)
    loss = out.square().mean()
    precision.backward(loss)
    assert seen == [torch.float64] * 3
    assert created_inside.dtype == torch.float64
    assert out.dtype == loss.dtype == torch.float32  # outputs in the default dtype, as in LightningLite
    assert all(
        p.dtype == torch.float64 and p.grad is not None and p.grad.dtype == torch.float64
        for p in model.parameters()
    )


@pytest.mark.parametrize(
    ("name", "dtype"), [("64-true", torch.float64), ("16-true", torch.float16), ("bf16-true", torch.bfloat16)]
)
def test_true_modes_set_the_default_dtype_in_forward(name: str, dtype: torch.dtype) -> None:
    precision = get_precision(name)
    assert precision.has_forward_context
    with precision.forward_context():
        assert torch.zeros(1).dtype == dtype
        assert not torch.is_autocast_enabled("cpu")
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("64-true", torch.float64),
        ("16-true", torch.float16),
        ("bf16-true", torch.bfloat16),
        ("32-true", torch.float32),
        ("16-mixed", torch.float32),
        ("bf16-mixed", torch.float32),
    ],
)
def test_module_init_context(name: str, dtype: torch.dtype) -> None:
    with get_precision(name).module_init_context():
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.dtype == dtype
    assert torch.get_default_dtype() == torch.float32


def test_module_init_context_nests_and_restores_on_error() -> None:
    double, half = get_precision(64), get_precision("bf16-true")
    with double.module_init_context():
        with half.module_init_context():
            assert torch.nn.Linear(1, 1).weight.dtype == torch.bfloat16
        assert torch.nn.Linear(1, 1).weight.dtype == torch.float64
        with pytest.raises(RuntimeError, match="boom"), half.module_init_context():
            raise RuntimeError("boom")
        assert torch.get_default_dtype() == torch.float64
    assert torch.get_default_dtype() == torch.float32


def test_autocast_context_nests() -> None:
    precision = get_precision("bf16-mixed")
    with precision.forward_context():
        with precision.forward_context():
            assert torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("64-true", True),
        ("32-true", True),
        ("16-mixed", False),  # the loss is scaled and the step unscaled
        ("bf16-mixed", True),
        ("16-true", True),
        ("bf16-true", True),
    ],
)
def test_plain_backward_and_step_flag(name: str, plain: bool) -> None:
    assert get_precision(name).plain_backward_and_step is plain


def test_a_subclass_that_overrides_backward_is_not_plain() -> None:
    calls: list[str] = []

    class Logging(Precision):
        def backward(self, tensor: torch.Tensor, *args: object, **kwargs: object) -> None:
            calls.append("backward")
            super().backward(tensor, *args, **kwargs)

    assert Precision().plain_backward_and_step
    assert not Logging().plain_backward_and_step
    Logging().backward(torch.ones(1, requires_grad=True).sum())
    assert calls == ["backward"]


@pytest.mark.parametrize("name", ["32-true", "64-true", "bf16-mixed", "bf16-true", "16-true"])
def test_wrap_forward_is_convert_input_context_convert_output(name: str) -> None:
    precision = get_precision(name, "cpu")
    seen: list[Any] = []

    def forward(x: torch.Tensor, *, scale: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
        seen.append(
            (x.dtype, scale.dtype, steps, torch.get_default_dtype(), torch.is_autocast_enabled("cpu"))
        )
        return {"out": torch.nn.functional.linear(x, torch.ones(3, 3)) * scale, "index": torch.arange(2)}

    wrapped = precision.wrap_forward(forward)
    if name == "32-true":
        assert wrapped is forward  # nothing added
    x, scale = torch.randn(2, 3), torch.tensor(2.0)
    out = wrapped(x, scale=scale, steps=3)
    # the same as composing the three methods by hand
    args, kwargs = precision.convert_input((x,)), precision.convert_input({"scale": scale, "steps": 3})
    with precision.forward_context():
        raw = forward(*args, **kwargs)
    expected = precision.convert_output(raw)
    assert seen[0] == seen[1]
    assert out["out"].dtype == expected["out"].dtype and out["index"].dtype == torch.int64
    torch.testing.assert_close(out["out"], expected["out"])


def test_wrap_forward_follows_a_subclass_that_changes_a_piece() -> None:
    class NoInputCast(type(get_precision("bf16-mixed", "cpu"))):  # type: ignore[misc]
        def convert_input(self, data: Any) -> Any:
            return data

    precision = NoInputCast("cpu")
    dtypes: list[torch.dtype] = []
    precision.wrap_forward(lambda x: dtypes.append(x.dtype) or x)(torch.randn(2))
    assert dtypes == [torch.float32]  # the subclass's convert_input ran, not the inlined cast
