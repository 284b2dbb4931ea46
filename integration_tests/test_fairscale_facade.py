"""``LightningLite(strategy="ddp_sharded" | "ddp_sharded_spawn")`` on 2 CPU processes (fairscale).

The program zeroes gradients the two ways users do (``optimizer.zero_grad()`` and
``model.zero_grad()``, both ``set_to_none=True`` in torch 2, the fairscale trap) and is compared
with plain PyTorch in one process on the whole batch; it saves after 2 of 4 steps, and a second
run that resumes from the file must see the same losses and end with the same parameters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fairscale")

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lite_facade import LightningLite

HERE = Path(__file__).resolve().parent
NUM_SAMPLES = 32
GLOBAL_BATCH = 8
SAVE_AFTER = 2
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(NUM_SAMPLES, 4, generator=generator), torch.randn(NUM_SAMPLES, 2, generator=generator)


def make_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.4)
    return model


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)  # momentum: state to resume


def flat(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]).tolist()


class ShardedLite(LightningLite):
    """Trains 4 steps over a global batch of 8, saving after SAVE_AFTER; then resumes from the file."""

    def run(self, path: str) -> dict[str, Any]:
        trained = self.train(path, resume=False)
        resumed = self.train(path, resume=True)  # a new model and optimizer, set up again
        return {"trained": trained, "resumed": resumed}

    def train(self, path: str, resume: bool) -> dict[str, Any]:
        model = make_model()
        model, optimizer = self.setup(model, make_optimizer(model))
        x, y = make_data()
        loader = self.setup_dataloaders(
            DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // self.world_size)
        )
        state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
        if resume:
            self.load(path, state)
        losses: dict[int, float] = {}
        for step, (xb, yb) in enumerate(loader):
            if step < state["step"]:
                continue
            if step % 2:
                model.zero_grad()
            else:
                optimizer.zero_grad()
            loss = F.mse_loss(model(xb), yb)
            self.backward(loss)
            optimizer.step()
            losses[step] = self.all_gather(loss.detach()).mean().item()
            if not resume and step + 1 == SAVE_AFTER:
                self.save({"model": model, "optimizer": optimizer, "step": step + 1}, path)
        return {"world_size": self.world_size, "params": flat(model), "losses": losses}


def reference() -> dict[str, Any]:
    """Plain PyTorch, one process, the whole global batch per step."""
    model = make_model()
    optimizer = make_optimizer(model)
    x, y = make_data()
    losses = {}
    for step, (xb, yb) in enumerate(DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH)):
        optimizer.zero_grad()
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
    return {"params": flat(model), "losses": losses}


def check(trained: dict[str, Any], resumed: dict[str, Any], expected: dict[str, Any]) -> None:
    assert trained["world_size"] == resumed["world_size"] == 2
    torch.testing.assert_close(torch.tensor(trained["params"]), torch.tensor(expected["params"]), **TOL)
    assert trained["losses"] == pytest.approx(expected["losses"], rel=1e-5)
    assert max(abs(a - b) for a, b in zip(trained["params"], flat(make_model()))) > 1e-2  # it trained
    # resuming gives the same next losses and parameters as not stopping
    assert sorted(resumed["losses"]) == [2, 3]
    assert resumed["losses"] == pytest.approx({k: trained["losses"][k] for k in (2, 3)}, rel=1e-6)
    torch.testing.assert_close(
        torch.tensor(resumed["params"]), torch.tensor(trained["params"]), rtol=1e-6, atol=1e-7
    )


SCRIPT = """
import json, os, sys
sys.path.insert(0, {here!r})
from test_fairscale_facade import ShardedLite

def main():
    path = os.path.join(sys.argv[1], "checkpoint.pt")
    results = ShardedLite(strategy="ddp_sharded", accelerator="cpu", devices=2).run(path)
    with open(os.path.join(sys.argv[1], f"rank{{os.environ.get('RANK', '0')}}.json"), "w") as f:
        json.dump(results, f)

if __name__ == "__main__":
    main()
"""


def _load_json(path: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(path.read_text())
    for run in results.values():  # json keys are strings
        run["losses"] = {int(k): v for k, v in run["losses"].items()}
    return results


def test_ddp_sharded_script_launcher_trains_like_plain_pytorch_and_resumes(tmp_path: Path) -> None:
    script = tmp_path / "sharded_script.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    per_rank = [_load_json(tmp_path / f"rank{rank}.json") for rank in range(2)]
    expected = reference()
    for results in per_rank:
        check(results["trained"], results["resumed"], expected)
    assert per_rank[0]["trained"]["params"] == per_rank[1]["trained"]["params"]


def test_ddp_sharded_spawn_trains_like_plain_pytorch_and_resumes(tmp_path: Path) -> None:
    path = str(tmp_path / "checkpoint.pt")
    results = ShardedLite(strategy="ddp_sharded_spawn", accelerator="cpu", devices=2).run(path)
    check(results["trained"], results["resumed"], reference())
    # the file is one plain checkpoint: full model and optimizer state dicts
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == SAVE_AFTER
    assert list(checkpoint["model"]) == list(make_model().state_dict())
    assert sorted(checkpoint["optimizer"]["state"]) == list(range(len(list(make_model().parameters()))))


class ClipLite(LightningLite):
    """Two steps with ``clip_gradients``: by norm (the norm over every rank's share), then by value."""

    def run(self) -> dict[str, Any]:
        model = make_model()
        model, optimizer = self.setup(model, make_optimizer(model))
        x, y = make_data()
        loader = self.setup_dataloaders(
            DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // self.world_size)
        )
        norms = []
        for step, (xb, yb) in zip(range(2), loader):
            optimizer.zero_grad()
            self.backward(F.mse_loss(model(xb), yb))
            if step == 0:
                norms.append(self.clip_gradients(model, optimizer, max_norm=0.05).item())
            else:
                self.clip_gradients(model, optimizer, clip_val=0.01)
            optimizer.step()
        return {"norms": norms, "params": flat(model)}


def test_ddp_sharded_clip_gradients_uses_the_norm_over_all_shards() -> None:
    results = ClipLite(strategy="ddp_sharded_spawn", accelerator="cpu", devices=2).run()
    model = make_model()
    optimizer = make_optimizer(model)
    x, y = make_data()
    norms = []
    for step, (xb, yb) in zip(range(2), DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH)):
        optimizer.zero_grad()
        F.mse_loss(model(xb), yb).backward()
        if step == 0:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05).item())
        else:
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        optimizer.step()
    assert norms[0] > 0.05  # the clipping did something
    assert results["norms"] == pytest.approx(norms, rel=1e-5)
    torch.testing.assert_close(torch.tensor(results["params"]), torch.tensor(flat(model)), **TOL)
