"""CUDA paths (skipped without a GPU): nccl process group, spawn results from the GPU, 16-mixed steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from strategies_testutil import child_env

from lite_strategies import DDPSpawnStrategy
from lite_testing import run_if


def _on_gpu(strategy: DDPSpawnStrategy) -> dict[str, object]:
    import lite_collectives

    model = strategy.setup_module(torch.nn.Linear(2, 2))
    out = model(strategy.batch_to_device(torch.ones(3, 2)))
    return {"out": out, "device": str(out.device), "backend": str(torch.distributed.get_backend()),
            "initialized": lite_collectives.is_initialized()}  # fmt: skip


@run_if(min_cuda_gpus=1)
def test_ddp_spawn_on_cuda_uses_nccl_and_returns_gpu_tensors_on_cpu() -> None:
    strategy = DDPSpawnStrategy(accelerator="cuda", devices=[torch.device("cuda", 0)])
    assert strategy.launcher is not None
    result = strategy.launcher.launch(_on_gpu, strategy)
    assert result["device"] == "cuda:0" and result["backend"] == "nccl" and result["initialized"]
    assert result["out"].device == torch.device("cpu") and result["out"].shape == (3, 2)


_SCRIPT = """
import torch
from lite_strategies import DDPStrategy
def run(strategy):
    model = strategy.setup_module(torch.nn.Linear(2, 2))
    loss = model(strategy.batch_to_device(torch.ones(3, 2))).sum()
    strategy.backward(loss, model)
    print("OK", strategy.root_device, torch.distributed.get_backend(), flush=True)
if __name__ == "__main__":
    s = DDPStrategy(accelerator="cuda", devices=[torch.device("cuda", 0)])
    s.launcher.launch(run, s)
"""


@run_if(min_cuda_gpus=1)
def test_ddp_script_launcher_on_cuda(tmp_path: Path) -> None:
    script = tmp_path / "cuda_script.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK cuda:0 nccl" in proc.stdout


# These initialize CUDA, after which this process could not fork: each runs in its own interpreter.
_IN_PROCESS = {
    "fork_refuses_after_cuda_init": """
import torch, lite_strategies
torch.zeros(1, device="cuda")
s = lite_strategies.DDPForkStrategy(accelerator="cuda", devices=[torch.device("cuda", 0)])
try:
    s.launcher.launch(print)
except lite_strategies.StrategyError as e:
    assert "CUDA is already initialized" in str(e), e
else:
    raise AssertionError("fork after CUDA init was not refused")
""",
    "dp_wraps_in_data_parallel": """
import torch, lite_strategies
s = lite_strategies.DataParallelStrategy(devices=[torch.device("cuda", 0)])
model = s.setup_module(torch.nn.Linear(2, 2))
assert isinstance(model, torch.nn.DataParallel)
assert model(s.batch_to_device(torch.ones(4, 2))).device == torch.device("cuda", 0)
assert s.get_module_state_dict(model).keys() == {"weight", "bias"}
assert s.launcher is None and s.world_size == 1
""",
    "single_device_16_mixed_step": """
import torch
from lite_precision import get_precision
from lite_strategies import SingleDeviceStrategy
s = SingleDeviceStrategy(accelerator="cuda", precision=get_precision("16-mixed", "cuda"))
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, (opt,) = s.setup_module_and_optimizers(model, [opt])
before = model.weight.detach().clone()
for _ in range(3):  # the first steps may be skipped while the scaler backs off from inf gradients
    with s.precision.forward_context():
        loss = model(s.batch_to_device(torch.ones(2, 4))).float().sum()
    s.backward(loss, model)
    s.optimizer_step(opt)
    opt.zero_grad()
assert s.precision.state_dict()["scale"] < 65536.0  # the scaler ran
assert model.weight.device.type == "cuda" and not torch.equal(before, model.weight.detach())
""",
}


@run_if(min_cuda_gpus=1)
@pytest.mark.parametrize("name", sorted(_IN_PROCESS))
def test_cuda_in_a_fresh_interpreter(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS[name]],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
