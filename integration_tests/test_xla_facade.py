"""LightningLite on XLA:CPU (torch_xla with PJRT_DEVICE=CPU, one device): the TPU spellings train.

Runs for real on one XLA:CPU device, in this process (torch_xla's launcher runs a single
device's function where it is called): a few SGD steps through ``setup``,
``setup_dataloaders``, ``backward`` and the optimizer step, compared with the same loop on the
CPU; a checkpoint saved through ``lite.save`` resumes with the same next loss. Several XLA
replicas cannot run here (collectives between XLA:CPU devices abort inside torch_xla).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla")

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lite_facade.lite import LightningLite

EPOCHS = 3
BATCHES = 3  # per epoch: 12 rows, batch_size=4


@pytest.fixture(scope="module", autouse=True)
def _xla_cpu() -> Iterator[None]:
    chosen = os.environ.get("PJRT_DEVICE")
    if chosen not in (None, "CPU"):
        pytest.skip(f"these tests run on XLA:CPU; PJRT_DEVICE={chosen!r}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PJRT_DEVICE", "CPU")
        mp.setenv("PJRT_LOCAL_PROCESS_COUNT", "1")  # torch_xla sets it when it runs a function here
        yield


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    return DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])), batch_size=4)


class Train(LightningLite):
    def run(
        self, epochs: int = EPOCHS, checkpoint: str | None = None, resume: bool = False
    ) -> dict[str, Any]:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model, optimizer = self.setup(model, optimizer)
        loader = self.setup_dataloaders(_data())
        if resume:
            assert checkpoint is not None
            self.load(checkpoint, {"model": model, "optimizer": optimizer})
        losses = []
        for _ in range(epochs):
            for x, y in loader:
                loss = nn.functional.mse_loss(model(x), y)
                self.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
        if checkpoint is not None and not resume:
            self.save({"model": model, "optimizer": optimizer}, checkpoint)
        return {
            "device": str(self.device),
            "param_device": next(model.parameters()).device.type,
            "world_size": self.world_size,
            "losses": losses,
            "weight": model.module.weight.detach().cpu(),
        }


def _cpu_reference() -> dict[str, Any]:
    return Train(accelerator="cpu").run()


@pytest.mark.parametrize(
    "flags",
    [
        {"strategy": "tpu_spawn", "accelerator": "tpu", "devices": 1},
        {"strategy": "xla", "accelerator": "xla", "devices": 1},
        {"accelerator": "tpu", "devices": 1},
        {"tpu_cores": 1},
    ],
    ids=["tpu_spawn", "xla", "accelerator=tpu", "tpu_cores=1"],
)
def test_lite_trains_on_xla_cpu_like_the_cpu(flags: dict[str, Any]) -> None:
    result = Train(**flags).run()
    assert (result["device"], result["param_device"], result["world_size"]) == ("xla:0", "xla", 1)
    expected = _cpu_reference()
    torch.testing.assert_close(result["losses"], expected["losses"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["weight"], expected["weight"], rtol=1e-5, atol=1e-6)


def test_save_on_xla_and_resume_gives_the_next_loss(tmp_path: Path) -> None:
    flags = {"strategy": "tpu_spawn", "accelerator": "tpu", "devices": 1}
    checkpoint = str(tmp_path / "lite.ckpt")
    Train(**flags).run(EPOCHS, checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["model"]["weight"].device.type == "cpu"  # written from CPU copies, loads anywhere
    resumed = Train(**flags).run(1, checkpoint, resume=True)
    uninterrupted = Train(**flags).run(EPOCHS + 1)
    assert resumed["losses"] == pytest.approx(uninterrupted["losses"][EPOCHS * BATCHES :], rel=1e-5)
