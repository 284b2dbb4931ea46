"""Trains with dropout on a shuffled loader, checkpointing every step; optionally SIGKILLs itself, or resumes.

    python resume_program.py STRATEGY DEVICES CHECKPOINT OUT [--kill-after STEP]

With ``--kill-after k`` global rank 0 kills itself with SIGKILL right after saving step ``k``
(the other ranks are then stopped by the launcher). Started again with the same CHECKPOINT, it
resumes from the last save. Rank 0 writes the final parameters and optimizer state to OUT.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lite_facade import LightningLite

EPOCHS = 2
SAMPLES = 48
BATCH = 4


class Resumable(LightningLite):
    def run(self, checkpoint: str, out: str, kill_after: int | None) -> None:
        self.seed_everything(1234)
        model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.4), nn.Linear(32, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model, optimizer = self.setup(model, optimizer)
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(SAMPLES, 6, generator=g), torch.randn(SAMPLES, 1, generator=g))
        loader = self.setup_dataloaders(DataLoader(data, batch_size=BATCH, shuffle=True))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
        state = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "loader": loader,
            "epoch": 0,
            "step": 0,
        }
        if Path(checkpoint).exists():
            self.load(checkpoint, state)
            self.print(f"resumed at step {state['step']}")
        for epoch in range(state["epoch"], EPOCHS):
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                self.backward(loss)
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                state["epoch"] = epoch  # the loader's own state says where in the epoch
                self.save(state, checkpoint, include_rng=True)
                if kill_after is not None and state["step"] == kill_after and self.global_rank == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            state["epoch"] = epoch + 1
        if self.global_rank == 0:
            torch.save(
                {
                    "params": [p.detach().clone() for p in model.parameters()],
                    "optimizer": optimizer.state_dict(),
                    "steps": state["step"],
                },
                out,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy")
    parser.add_argument("devices", type=int)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()
    lite = Resumable(accelerator="cpu", strategy=args.strategy, devices=args.devices)
    lite.run(args.checkpoint, args.out, args.kill_after)
