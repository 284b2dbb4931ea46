"""CUDA-only behaviour; runs where a GPU is present (skipped elsewhere, with the reason)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lite_testing import run_if

# see test_precision_training.py: keeps the environment-leak guard quiet
import torch._dynamo  # isort: skip

from lite_precision import Precision, get_precision


def _train(precision: Precision, device: torch.device, steps: int = 20) -> tuple[list[float], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator)
    y = torch.sin(x.sum(1, keepdim=True))
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    if precision.name == "64-true":
        x, y = x.double(), y.double()
    model = precision.convert_module(model).to(device)
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        with precision.forward_context():
            out = model(precision.convert_input(x))
        loss = torch.nn.functional.mse_loss(precision.convert_output(out), y)
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, torch.cat([p.detach().double().cpu().flatten() for p in model.parameters()])


@run_if(min_cuda_gpus=1)
@pytest.mark.parametrize(("name", "tolerance"), [("16-mixed", 5e-3), ("16-true", 1e-2), ("32-true", 1e-4)])
def test_cuda_training_matches_float64(name: str, tolerance: float) -> None:
    device = torch.device("cuda", 0)
    ref_losses, ref_params = _train(get_precision(64, "cuda"), device)
    precision = get_precision(name, "cuda")
    losses, params = _train(precision, device)
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    assert loss_error <= tolerance
    assert ((params - ref_params).norm() / ref_params.norm()).item() <= tolerance
    if precision.uses_scaler:
        assert precision.scaler is not None and precision.scaler.is_enabled()
        assert precision.state_dict()["scale"] == 65536.0


@run_if(min_cuda_gpus=1)
def test_cuda_16_mixed_autocasts_and_skips_inf_steps() -> None:
    precision = get_precision(16, "cuda")
    model = precision.convert_module(torch.nn.Linear(4, 2)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.forward_context():
        out = model(precision.convert_input(torch.randn(3, 4, device="cuda")))
        assert out.dtype == torch.float16
    precision.backward(precision.convert_output(out).sum())
    model.weight.grad[0, 0] = float("inf")  # type: ignore[index]
    before = model.weight.detach().clone()
    precision.optimizer_step(optimizer)
    assert torch.equal(model.weight, before)
    assert precision.state_dict()["scale"] == 32768.0


@run_if(bf16_cuda=True)
def test_cuda_bf16_mixed_trains() -> None:
    precision = get_precision("bf16-mixed", "cuda")
    losses, _ = _train(precision, torch.device("cuda", 0))
    assert losses[-1] < 0.9 * losses[0]


def _in_fresh_process(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


@run_if(min_cuda_gpus=1)
def test_bf16_probe_agrees_with_torch_and_does_not_initialize_cuda() -> None:
    code = (
        "import torch\n"
        "from lite_precision._devices import cuda_bf16_supported\n"
        "supported = cuda_bf16_supported()\n"
        "print(supported, torch.cuda.is_initialized())\n"
    )
    supported, initialized = _in_fresh_process(code).split()
    assert initialized == "False"
    assert supported == str(torch.cuda.is_bf16_supported(including_emulation=False))


@run_if(min_cuda_gpus=1)
def test_building_every_cuda_mode_keeps_fork_possible() -> None:
    # Not only "CUDA is not initialised": a forked child must really compute on the GPU
    # (a driver initialised before the fork makes that fail, e.g. after torch.cuda.is_available()).
    code = (
        "import multiprocessing as mp, torch\n"
        "from lite_precision import PRECISIONS, get_precision\n"
        "modes = [get_precision(n, 'cuda') for n in PRECISIONS if PRECISIONS[n].unsupported_reason('cuda') is None]\n"
        "bf16 = [m for m in modes if m.name.startswith('bf16')]\n"
        "def child(queue):\n"
        "    try:\n"
        "        x = torch.ones(4, device='cuda')\n"
        "        queue.put(float((x * 2).sum().item()))\n"
        "    except Exception as err:\n"
        "        queue.put(repr(err))\n"
        "if __name__ == '__main__':\n"
        "    initialized = torch.cuda.is_initialized()\n"
        "    ctx = mp.get_context('fork')\n"
        "    queue = ctx.Queue()\n"
        "    proc = ctx.Process(target=child, args=(queue,))\n"
        "    proc.start()\n"
        "    result = queue.get(timeout=120)\n"
        "    proc.join(timeout=60)\n"
        "    print(len(modes), len(bf16), initialized, result)\n"
    )
    count, _, initialized, result = _in_fresh_process(code).split(maxsplit=3)
    assert int(count) >= 4
    assert initialized == "False"
    assert result == "8.0", f"the forked child could not use CUDA: {result}"
