"""The training program every row of the matrix runs, and its plain PyTorch reference.

A module of its own (not a test file) so that processes started with 'spawn' and the scripts
that ``strategy="ddp"`` re-runs can import it by name: the integration_tests directory is put
on ``sys.path`` by pytest, by spawn (which copies the parent's ``sys.path``) and by the scripts.

The program: a small MLP, fixed data (24 samples), SGD, one epoch of 3 steps over a global
batch of 8. With N processes each one's DataLoader has batch size 8 / N and the set-up
DataLoader's distributed sampler gives it its share of every global batch; DDP averages the
gradients, so the parameters after each step equal those of one process on the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lite_facade import LightningLite

# torch imports torch._dynamo (seconds on 2 cores) when the first optimizer is built. Pay that once
# here, at import, so that processes forked from the importer (ddp_fork rows) start warm.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

NUM_SAMPLES = 24
GLOBAL_BATCH = 8
LEARNING_RATE = 5.0
# The loss is scaled down (and the learning rate up, which gives the same steps) so that float16
# gradients times the GradScaler's initial scale (65536) stay finite on every rank's share of a
# batch: 16-mixed then skips no step and can be compared with the reference.
LOSS_FACTOR = 0.1


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """24 fixed samples: inputs of 4 features, regression targets of 2."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(NUM_SAMPLES, 4, generator=generator)
    y = 0.1 * torch.randn(NUM_SAMPLES, 2, generator=generator)
    return x, y


def make_model() -> nn.Module:
    """A 4-16-2 MLP whose initial weights depend on nothing but this function (not the global seed)."""
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, scaled by ``LOSS_FACTOR``."""
    return LOSS_FACTOR * F.mse_loss(output, target)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter, in registration order, as one float64 vector on the CPU."""
    return torch.cat(
        [p.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for p in model.parameters()]
    )


def reference_parameters() -> torch.Tensor:
    """Plain PyTorch in one process, float64, the whole global batch per step: the expected result."""
    model = make_model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    x, y = make_data()
    for xb, yb in DataLoader(TensorDataset(x.double(), y.double()), batch_size=GLOBAL_BATCH):
        optimizer.zero_grad()
        loss_fn(model(xb), yb).backward()
        optimizer.step()
    return flat_parameters(model)


def initial_parameters() -> torch.Tensor:
    """The parameters before training (to check that training moved them further than the tolerance)."""
    return flat_parameters(make_model())


class MatrixLite(LightningLite):
    """Trains the program and reports what every process ended with."""

    def run(self) -> dict[str, Any]:
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        model, optimizer = self.setup(model, optimizer)
        x, y = make_data()
        # Each process's batch is its share of the global batch; setup_dataloaders splits the data.
        loader = self.setup_dataloaders(
            DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // self.world_size)
        )
        seen = 0
        for xb, yb in loader:
            assert xb.device == self.device, (xb.device, self.device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            self.backward(loss)
            optimizer.step()
            seen += xb.shape[0]
        with torch.no_grad():
            output_dtype = str(model(x[:1].to(self.device)).dtype)
        params = flat_parameters(model)
        gathered = self.all_gather(params.to(self.device))
        samples = self.all_gather(torch.tensor(seen, device=self.device))
        ranks = self.all_gather(torch.tensor(self.global_rank, device=self.device))
        if gathered.dim() == params.dim():  # without a process group, all_gather returns the data as it is
            gathered, samples, ranks = gathered.unsqueeze(0), samples.unsqueeze(0), ranks.unsqueeze(0)
        return {
            "world_size": self.world_size,
            "params": gathered.cpu().tolist(),
            "samples": samples.cpu().tolist(),
            "ranks": ranks.cpu().tolist(),
            "param_dtype": str(next(model.parameters()).dtype),
            "output_dtype": output_dtype,
        }
