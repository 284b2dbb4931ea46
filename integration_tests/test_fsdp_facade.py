"""``LightningLite(strategy="fsdp")`` on 2 CPU processes: trains like DDP, and save -> resume continues exactly.

The ranks are started by lite_testing.run_processes with the rank variables set, so the
script launcher of "fsdp" and "ddp" runs each rank's program where it is (as under torchrun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) needs torch >= 2.6", allow_module_level=True)

from lite_facade import LightningLite  # noqa: E402
from lite_testing import run_processes  # noqa: E402

# torch imports torch._dynamo when the first optimizer is built: pay it once here, before forking.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

TIMEOUT = 120
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
    """Every parameter, unsharded (DTensor.full_tensor is a collective), as float32 on the CPU."""
    return [
        (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu().clone()
        for p in model.parameters()
    ]


class Trainer(LightningLite):
    """Adam on a small MLP; optionally saves after ``save_at`` steps or resumes from ``resume``."""

    def run(
        self,
        save: str | None = None,
        save_at: int = 0,
        resume: str | None = None,
        clip: float | None = None,
        save_end: str | None = None,
    ) -> dict[str, Any]:
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        model, optimizer = self.setup(model, optimizer)
        loader = self.setup_dataloaders(make_loader())
        state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
        if resume is not None:
            self.load(resume, state)
        losses, norms = [], []
        for step, (x, y) in enumerate(loader):
            if step < state["step"]:
                continue  # batches seen before the checkpoint
            if save is not None and step == save_at:
                self.save({**state, "step": step}, save)
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(self.all_gather(loss.detach()).mean().item())  # the global batch's loss
            self.backward(loss)
            if clip is not None:
                norm = self.clip_gradients(model, optimizer, max_norm=clip)
                assert type(norm) is torch.Tensor, type(norm)  # not a DTensor
                norms.append(float(norm))
            optimizer.step()
            optimizer.zero_grad()
        if save_end is not None:
            self.save({"model": model, "optimizer": optimizer, "step": STEPS}, save_end)
        return {"losses": losses, "params": full_parameters(model), "step": state["step"], "norms": norms}


def _run(rank: int, world_size: int, strategy: str, precision: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return Trainer(strategy=strategy, accelerator="cpu", devices=world_size, precision=precision).run(
        **kwargs
    )


@pytest.mark.parametrize(("precision", "tolerance"), [("32-true", 1e-6), ("bf16-mixed", 1e-3)])
def test_fsdp_trains_like_ddp(precision: str, tolerance: float) -> None:
    ddp = run_processes(_run, 2, "ddp", precision, {}, init=False, timeout=TIMEOUT)[0]
    results = run_processes(_run, 2, "fsdp", precision, {}, init=False, timeout=TIMEOUT)
    initial = full_parameters(make_model())
    assert max((a - b).abs().max() for a, b in zip(ddp["params"], initial)) > 10 * tolerance  # it trained
    for result in results:
        assert len(result["losses"]) == STEPS
        assert result["losses"] == pytest.approx(ddp["losses"], rel=tolerance, abs=tolerance)
        for actual, expected in zip(result["params"], ddp["params"]):
            torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)


def test_fsdp_save_then_resume_gives_the_same_next_loss(tmp_path: Path) -> None:
    checkpoint = str(tmp_path / "ckpt")
    save_at = 2
    straight = run_processes(
        _run, 2, "fsdp", "32-true", {"save": checkpoint, "save_at": save_at}, init=False, timeout=TIMEOUT
    )[0]
    assert (tmp_path / "ckpt" / ".metadata").is_file()  # a sharded checkpoint directory
    resumed = run_processes(_run, 2, "fsdp", "32-true", {"resume": checkpoint}, init=False, timeout=TIMEOUT)
    for result in resumed:
        assert result["step"] == save_at
        # the losses after the checkpoint, and the final parameters, as if training never stopped
        assert result["losses"] == pytest.approx(straight["losses"][save_at:], rel=1e-6, abs=1e-7)
        for actual, expected in zip(result["params"], straight["params"]):
            torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_fsdp_clip_gradients_clips_by_the_norm_over_all_shards() -> None:
    ddp = run_processes(_run, 2, "ddp", "32-true", {"clip": 0.05}, init=False, timeout=TIMEOUT)[0]
    results = run_processes(_run, 2, "fsdp", "32-true", {"clip": 0.05}, init=False, timeout=TIMEOUT)
    assert min(ddp["norms"]) > 0.05  # every step was clipped
    for result in results:
        assert result["norms"] == pytest.approx(ddp["norms"], rel=1e-5)  # plain floats, the global norm
        assert result["losses"] == pytest.approx(ddp["losses"], rel=1e-5, abs=1e-6)
        for actual, expected in zip(result["params"], ddp["params"]):
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_a_sharded_checkpoint_consolidates_into_a_file_that_torch_alone_loads(tmp_path: Path) -> None:
    from lite_facade.consolidate import consolidate_checkpoint, main

    checkpoint = tmp_path / "ckpt"
    result = run_processes(
        _run, 2, "fsdp", "32-true", {"save_end": str(checkpoint)}, init=False, timeout=TIMEOUT
    )[0]
    assert (checkpoint / ".metadata").is_file()
    out = tmp_path / "model.pt"
    assert main([str(checkpoint), str(out)]) == 0  # the only model entry is found by itself
    plain = make_model()
    plain.load_state_dict(torch.load(out, weights_only=True))  # torch alone, strict keys
    for actual, expected in zip(plain.parameters(), result["params"]):
        torch.testing.assert_close(actual.detach(), expected, rtol=0, atol=0)
    assert consolidate_checkpoint(checkpoint, key="model").keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="not a model's state dict"):
        consolidate_checkpoint(checkpoint, key="optimizer")


def test_a_sharded_checkpoint_refuses_a_url_before_writing_anything() -> None:
    from lite_strategies import CheckpointError, FSDPStrategy

    with pytest.raises(CheckpointError, match="state_dict_type='full'"):
        FSDPStrategy().save_checkpoint("memory://bucket/ckpt", {"step": 1})
