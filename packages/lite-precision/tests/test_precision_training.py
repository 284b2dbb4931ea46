"""Training with each mode against a float64 reference, and the loss-scaling path of 16-mixed."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

# torch sets TORCHINDUCTOR_CACHE_DIR when torch._dynamo is first imported (the first optimizer
# does it); importing it at collection keeps lite-testing's environment-leak guard from
# blaming the first test that builds an optimizer.
import torch._dynamo  # isort: skip

from lite_precision import HalfMixedPrecision, Precision, PrecisionError, get_precision

STEPS = 20
LR = 0.1

# Largest relative error allowed against the float64 reference, for the per-step loss and
# for the final parameter vector (norm of the difference / norm of the reference), and the
# smallest: a low-precision mode that matched float64 to 1e-6 would not be doing its job.
# Measured on CPU with torch 2.13 at about a fifth to a tenth of these limits.
TOLERANCES = {
    # float64 training whose outputs come back in float32 (as LightningLite does): the loss is
    # computed from the output rounded to float32, so it differs at float32's resolution.
    "64-true": (1e-6, None),
    "32-true": (1e-5, None),
    "16-mixed": (5e-3, 1e-6),
    "bf16-mixed": (2e-2, 1e-6),
    "16-true": (1e-2, 1e-6),
    "bf16-true": (5e-2, 1e-6),
}


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator)
    return x, torch.sin(x.sum(1, keepdim=True))


def make_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def reference_run() -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch in float64, no precision object."""
    x, y = make_data()
    x, y = x.double(), y.double()
    model = make_model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64), flat_params(model)


def forward(precision: Precision, model: torch.nn.Module, x: torch.Tensor) -> Any:
    """The facade's module wrapper, in three steps."""
    with precision.forward_context():
        out = model(precision.convert_input(x))
    return precision.convert_output(out)


def precision_run(precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data()
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        out = forward(precision, model, x)
        loss = torch.nn.functional.mse_loss(out, y.to(out.dtype))
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64), flat_params(model)


@pytest.mark.parametrize("name", list(TOLERANCES))
def test_training_matches_float64_reference(name: str) -> None:
    upper, lower = TOLERANCES[name]
    ref_losses, ref_params = reference_run()
    precision = get_precision(name, "cpu")
    losses, params = precision_run(precision)
    loss_error = ((losses - ref_losses).abs() / ref_losses.abs()).max().item()
    param_error = ((params - ref_params).norm() / ref_params.norm()).item()
    assert loss_error <= upper, f"{name}: loss differs from float64 by {loss_error:.3g} (relative)"
    assert param_error <= upper, f"{name}: parameters differ from float64 by {param_error:.3g} (relative)"
    if lower is not None:
        assert max(loss_error, param_error) >= lower, f"{name} matched float64 too closely: is it active?"
    assert losses[-1] < 0.9 * losses[0]  # it trained
    if precision.uses_scaler:
        assert precision.state_dict()["scale"] == 65536.0  # no step was skipped


def _setup_16_mixed(
    **scaler_kwargs: Any,
) -> tuple[HalfMixedPrecision, torch.nn.Module, torch.optim.Optimizer]:
    scaler = torch.amp.GradScaler("cpu", **scaler_kwargs) if scaler_kwargs else None
    precision = HalfMixedPrecision("cpu", scaler=scaler)
    model = precision.convert_module(make_model())
    return precision, model, torch.optim.SGD(model.parameters(), lr=LR)


def _backward(precision: Precision, model: torch.nn.Module) -> torch.Tensor:
    x, y = make_data()
    out = forward(precision, model, x)
    # matching dtypes: on torch 2.9 mse_loss(float64, float32) fails in backward
    loss = torch.nn.functional.mse_loss(out, y.to(out.dtype))
    precision.backward(loss)
    return loss


def test_scaler_skips_a_step_with_an_inf_gradient_and_training_goes_on() -> None:
    precision, model, optimizer = _setup_16_mixed()
    assert precision.scaler is not None
    for step in range(4):
        before = flat_params(model)
        _backward(precision, model)
        if step == 1:
            next(model.parameters()).grad[0, 0] = float("inf")  # type: ignore[index]
        scale = precision.scaler.get_scale()
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        after = flat_params(model)
        if step == 1:
            assert torch.equal(after, before), "the step with an inf gradient must be skipped"
            assert precision.scaler.get_scale() == scale / 2
        else:
            assert not torch.equal(after, before)
            assert precision.scaler.get_scale() == scale
    assert precision.state_dict()["scale"] == 32768.0


def test_scaler_skips_a_nan_gradient() -> None:
    precision, model, optimizer = _setup_16_mixed(init_scale=4.0)
    _backward(precision, model)
    next(model.parameters()).grad[0, 0] = float("nan")  # type: ignore[index]
    before = flat_params(model)
    assert precision.optimizer_step(optimizer) is None
    assert torch.equal(flat_params(model), before)
    assert precision.state_dict()["scale"] == 2.0


def test_backward_scales_the_loss() -> None:
    scaled, model, _ = _setup_16_mixed(init_scale=1024.0)
    _backward(scaled, model)
    scaled_grad = next(model.parameters()).grad.clone()  # type: ignore[union-attr]
    plain, model, _ = _setup_16_mixed(init_scale=1.0)
    _backward(plain, model)
    plain_grad = next(model.parameters()).grad
    torch.testing.assert_close(scaled_grad / 1024.0, plain_grad, rtol=1e-2, atol=1e-4)


def test_manual_unscale_before_step_is_not_repeated() -> None:
    precision, model, optimizer = _setup_16_mixed(init_scale=1024.0)
    _backward(precision, model)
    precision.unscale_gradients(optimizer)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    assert max(g.abs().max().item() for g in grads) < 100  # unscaled (scaled ones are ~1024x)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)  # clipping sees true gradients
    precision.optimizer_step(optimizer)
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(p.detach(), b - LR * g)


def test_unscaling_twice_before_a_step_is_refused() -> None:
    precision, model, optimizer = _setup_16_mixed()
    _backward(precision, model)
    precision.unscale_gradients(optimizer)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        precision.unscale_gradients(optimizer)


@pytest.mark.parametrize("name", ["32-true", "64-true", "bf16-mixed", "bf16-true"])
def test_unscale_gradients_without_scaler_leaves_gradients(name: str) -> None:
    precision = get_precision(name)
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    _backward(precision, model)
    grad = next(model.parameters()).grad.clone()  # type: ignore[union-attr]
    precision.unscale_gradients(optimizer)
    assert torch.equal(next(model.parameters()).grad, grad)  # type: ignore[arg-type]


class _ReturningSGD(torch.optim.SGD):
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        result = super().step(closure)
        return ("stepped", result)


@pytest.mark.parametrize("name", list(TOLERANCES))
def test_optimizer_step_returns_what_step_returns(name: str) -> None:
    precision = get_precision(name)
    model = precision.convert_module(make_model())
    optimizer = _ReturningSGD(model.parameters(), lr=LR)
    _backward(precision, model)
    assert precision.optimizer_step(optimizer) == ("stepped", None)


@pytest.mark.parametrize("name", list(TOLERANCES))
def test_optimizer_step_with_a_closure(name: str) -> None:
    precision = get_precision(name)
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    calls: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _backward(precision, model)
        calls.append(loss)
        return loss

    before = flat_params(model)
    result = precision.optimizer_step(optimizer, closure=closure)
    assert len(calls) == 1
    assert result is calls[0] or (not precision.uses_scaler and torch.equal(result, calls[0]))
    assert not torch.equal(flat_params(model), before)


def test_lbfgs_with_loss_scaling_is_refused() -> None:
    precision, model, _ = _setup_16_mixed()
    optimizer = torch.optim.LBFGS(model.parameters())
    with pytest.raises(PrecisionError, match="LBFGS"):
        precision.optimizer_step(optimizer, closure=lambda: _backward(precision, model))


def test_lbfgs_with_bf16_mixed_works() -> None:
    precision = get_precision("bf16-mixed")
    model = precision.convert_module(make_model())
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=3)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        return _backward(precision, model)

    before = flat_params(model)
    precision.optimizer_step(optimizer, closure=closure)
    assert not torch.equal(flat_params(model), before)


def test_scaler_state_survives_a_checkpoint() -> None:
    precision, model, optimizer = _setup_16_mixed(init_scale=256.0, growth_interval=3)
    for step in range(5):
        _backward(precision, model)
        if step == 0:
            next(model.parameters()).grad[0, 0] = float("inf")  # type: ignore[index]
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    state = precision.state_dict()
    # 256 -> 128 on the inf, then 3 good steps -> 256, then 1 more good step towards the next growth
    assert (state["scale"], state["_growth_tracker"], state["growth_interval"]) == (256.0, 1, 3)

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = get_precision("16-mixed", "cpu")
    restored.load_state_dict(torch.load(buffer))
    assert restored.state_dict() == state
    assert restored.scaler is not None and restored.scaler.get_scale() == 256.0


def test_state_dict_before_any_step_has_the_initial_scale() -> None:
    precision = get_precision(16)
    assert precision.state_dict()["scale"] == 65536.0


def test_loading_an_empty_state_keeps_the_defaults() -> None:
    precision = get_precision(16)
    precision.load_state_dict(get_precision(32).state_dict())
    assert precision.state_dict()["scale"] == 65536.0
