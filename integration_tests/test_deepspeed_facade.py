"""``LightningLite(strategy="deepspeed")`` and ``strategy=DeepSpeedPlugin(stage=3)`` on 2 CPU processes.

Trains like DDP on the same global batches, and save -> resume (a DeepSpeed checkpoint
directory, one shard per rank) continues exactly. The ranks are started by
lite_testing.run_processes with the rank variables set, so the script launcher of
"deepspeed" and "ddp" runs each rank's program where it is (as under torchrun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

deepspeed = pytest.importorskip("deepspeed")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lite_facade import LightningLite  # noqa: E402
from lite_facade.plugins import DeepSpeedPlugin  # noqa: E402
from lite_strategies import StrategyError, consolidate_deepspeed_checkpoint  # noqa: E402
from lite_testing import run_processes  # noqa: E402

# torch imports torch._dynamo when the first optimizer is built: pay it once here, before forking.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

TIMEOUT = 180
GLOBAL_BATCH = 8
STEPS = 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def make_loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(
        torch.randn(STEPS * GLOBAL_BATCH, 4, generator=g), torch.randn(STEPS * GLOBAL_BATCH, 2, generator=g)
    )
    return DataLoader(data, batch_size=GLOBAL_BATCH // 2)  # per process; the set-up loader splits the data


def full_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as float32 on the CPU; ZeRO-3 partitions are gathered first (a collective)."""
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params) if hasattr(params[0], "ds_id") else _nothing():
        return [p.detach().float().cpu().clone() for p in params]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None


class Trainer(LightningLite):
    """Adam on a small MLP; optionally saves after ``save_at`` steps or resumes from ``resume``."""

    def run(
        self, save: str | None = None, save_at: int = 0, resume: str | None = None, clip: bool = False
    ) -> dict[str, Any]:
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        model, optimizer = self.setup(model, optimizer)
        loader = self.setup_dataloaders(make_loader())
        state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
        if resume is not None:
            self.load(resume, state)
        losses = []
        for step, (x, y) in enumerate(loader):
            if step < state["step"]:
                continue  # batches seen before the checkpoint
            if save is not None and step == save_at:
                self.save({**state, "step": step}, save)
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(self.all_gather(loss.detach()).mean().item())  # the global batch's loss
            self.backward(loss)
            if clip:  # DeepSpeed clips inside its step, from its config: said at the call
                with pytest.raises(StrategyError, match="gradient_clipping"):
                    self.clip_gradients(model, optimizer, max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad()
        return {
            "losses": losses,
            "params": full_parameters(model),
            "step": state["step"],
            "output_dtype": str(loss.dtype),
        }


def _run(rank: int, world_size: int, strategy: Any, precision: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if strategy == "plugin-stage-3":
        strategy = DeepSpeedPlugin(stage=3)
    lite = Trainer(strategy=strategy, accelerator="cpu", devices=world_size, precision=precision)
    return lite.run(**kwargs)


@pytest.fixture(scope="module")
def ddp() -> dict[str, Any]:
    return run_processes(_run, 2, "ddp", "32-true", {}, init=False, timeout=TIMEOUT)[0]


@pytest.mark.parametrize(
    ("strategy", "precision", "tolerance"),
    [
        ("deepspeed", "32-true", 1e-5),  # ZeRO stage 2
        ("plugin-stage-3", "32-true", 1e-5),
        ("deepspeed_stage_1", "32-true", 1e-5),
        # bfloat16 parameters and activations (fp32 master weights) against DDP in float32
        ("deepspeed_stage_3", "bf16-mixed", 1e-2),
    ],
)
def test_deepspeed_trains_like_ddp(
    ddp: dict[str, Any], strategy: str, precision: str, tolerance: float
) -> None:
    results = run_processes(_run, 2, strategy, precision, {}, init=False, timeout=TIMEOUT)
    initial = full_parameters(make_model())
    assert max((a - b).abs().max() for a, b in zip(ddp["params"], initial)) > 10 * tolerance  # it trained
    for result in results:
        assert len(result["losses"]) == STEPS
        assert result["output_dtype"] == "torch.float32"  # outputs come back in float32 for the loss
        assert result["losses"] == pytest.approx(ddp["losses"], rel=tolerance, abs=tolerance)
        for actual, expected in zip(result["params"], ddp["params"]):
            torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("strategy", ["deepspeed", "plugin-stage-3"])
def test_deepspeed_save_then_resume_gives_the_same_next_loss(tmp_path: Path, strategy: str) -> None:
    checkpoint = tmp_path / "ckpt"
    save_at = 2
    straight = run_processes(
        _run,
        2,
        strategy,
        "32-true",
        {"save": str(checkpoint), "save_at": save_at},
        init=False,
        timeout=TIMEOUT,
    )[0]
    assert (checkpoint / "model").is_dir()  # DeepSpeed's directory for the engine saved under "model"
    resumed = run_processes(
        _run, 2, strategy, "32-true", {"resume": str(checkpoint)}, init=False, timeout=TIMEOUT
    )
    for result in resumed:
        assert result["step"] == save_at
        # the losses after the checkpoint, and the final parameters, as if training never stopped
        assert result["losses"] == pytest.approx(straight["losses"][save_at:], rel=1e-6, abs=1e-7)
        for actual, expected in zip(result["params"], straight["params"]):
            torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)
    # One consolidated state dict, loadable into the plain model without DeepSpeed's processes.
    full = consolidate_deepspeed_checkpoint(checkpoint)
    assert full["step"] == save_at and "optimizer" not in full
    model = make_model()
    model.load_state_dict(full["model"])
    # The facade's helper writes just the model's state dict, which torch alone loads.
    from lite_facade.consolidate import consolidate_checkpoint

    consolidate_checkpoint(checkpoint, tmp_path / "model.pt")
    plain = make_model()
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for actual, expected in zip(plain.state_dict().values(), full["model"].values()):
        torch.testing.assert_close(actual, expected.float(), rtol=0, atol=0)


def test_deepspeed_clip_gradients_points_to_the_config(ddp: dict[str, Any]) -> None:
    results = run_processes(_run, 2, "deepspeed", "32-true", {"clip": True}, init=False, timeout=TIMEOUT)
    for result in results:  # the refused call changed nothing
        assert result["losses"] == pytest.approx(ddp["losses"], rel=1e-5, abs=1e-5)
