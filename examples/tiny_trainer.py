"""A tiny downstream trainer built on lite-strategies and lite-precision, without the facade.

    python examples/tiny_trainer.py                      # ddp_spawn, 2 CPU processes, bf16-mixed
    python examples/tiny_trainer.py --strategy ddp_fork --precision 32-true

This is what a framework that wants its own Trainer (and not LightningLite) takes from lite:
a strategy chosen by name from the registry, a precision plugin, and the strategy's launcher.
The loop stays the framework's: the strategy wraps the model (DDP here), steps the optimizer
through the precision (loss scaling for 16-mixed), and tells the data how to split.
"""

import argparse
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lite_precision import get_precision
from lite_strategies import Strategy, get_strategy_spec


@dataclass
class TinyTrainer:
    """Fits a model on a dataset with any registered multi-process strategy."""

    strategy: Strategy
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.1

    def fit(self, make_model, dataset) -> dict:  # type: ignore[no-untyped-def]
        # The launcher starts the processes, calls strategy.setup_environment() in each (process
        # group, device) and returns rank 0's value. With "spawn", _fit_in_process and its
        # arguments are pickled: make_model must be a module-level function.
        assert self.strategy.launcher is not None, "this trainer runs multi-process strategies"
        return self.strategy.launcher.launch(self._fit_in_process, make_model, dataset)

    def _fit_in_process(self, make_model, dataset) -> dict:  # type: ignore[no-untyped-def]
        strategy, precision = self.strategy, self.strategy.precision
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr)
        # Convert to the precision, move to this process's device, wrap (DDP): one call.
        model, (optimizer,) = strategy.setup_module_and_optimizers(model, [optimizer])
        sampler = DistributedSampler(dataset, **strategy.distributed_sampler_kwargs, shuffle=True, seed=0)
        loader = DataLoader(dataset, batch_size=self.batch_size // strategy.world_size, sampler=sampler)

        for epoch in range(self.epochs):
            sampler.set_epoch(epoch)
            for x, y in loader:
                x, y = strategy.batch_to_device((x, y))
                optimizer.zero_grad()
                with precision.forward_context():  # autocast for the mixed precisions
                    output = model(precision.convert_input(x))
                loss = nn.functional.cross_entropy(precision.convert_output(output), y)
                strategy.backward(loss, model)  # scales the loss for 16-mixed
                strategy.optimizer_step(optimizer)  # unscales, skips on inf, steps
        with torch.no_grad(), precision.forward_context():
            x, y = strategy.batch_to_device(dataset.tensors)
            accuracy = (model(precision.convert_input(x)).argmax(1) == y).float().mean()
        # Average what every process measured (they hold the same weights: DDP kept them in sync).
        accuracy = strategy.all_reduce(accuracy.float(), op="mean")
        return {"world_size": strategy.world_size, "accuracy": float(accuracy)}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))


def two_moons(n: int = 256) -> TensorDataset:
    """Two interleaved half circles: a small problem a linear model cannot solve."""
    generator = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=generator) * torch.pi
    label = torch.arange(n) % 2
    x = torch.stack([torch.cos(angle) + label, torch.sin(angle) * (1 - 2 * label) + 0.5 * label], dim=1)
    x = x + 0.05 * torch.randn(n, 2, generator=generator)
    return TensorDataset(x, label)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="ddp_spawn")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()

    spec = get_strategy_spec(args.strategy)  # the registry row: what it accepts, how it launches
    print(f"strategy {spec.name!r}: launcher {spec.launcher!r}, accelerators {spec.accelerators}")
    strategy = spec.build(
        accelerator="cpu",
        devices=[torch.device("cpu")] * args.devices,
        precision=get_precision(args.precision, "cpu"),
    )
    torch.manual_seed(0)
    result = TinyTrainer(strategy).fit(make_model, two_moons())
    print(f"world size {result['world_size']}, train accuracy: {result['accuracy']:.3f}")


if __name__ == "__main__":
    main()
