"""The README's stand-alone example: a tiny trainer on lite-strategies + lite-precision, no facade.

Run it as ``python readme_example.py`` (the script launcher starts the second process) or
under ``python -m torch.distributed.run --nproc_per_node 2 readme_example.py``.
"""

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lite_precision import get_precision
from lite_strategies import Strategy, get_strategy_spec


def train(strategy: Strategy, checkpoint: Path) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, (optimizer,) = strategy.setup_module_and_optimizers(model, [optimizer])

    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    sampler_kwargs = strategy.distributed_sampler_kwargs  # None in a single process
    sampler = DistributedSampler(data, **sampler_kwargs, shuffle=False) if sampler_kwargs else None
    loader = DataLoader(data, batch_size=8, sampler=sampler)

    for x, y in loader:
        x, y = strategy.batch_to_device((x, y))
        with strategy.precision.forward_context():
            loss = torch.nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        strategy.optimizer_step(optimizer)
        optimizer.zero_grad()

    mean_loss = strategy.all_reduce(loss.detach(), op="mean")
    strategy.save_checkpoint(checkpoint, {"model": model, "optimizer": optimizer})  # rank 0 writes
    restored = strategy.load_checkpoint(checkpoint)  # every rank reads, onto its device
    assert restored["model"].keys() == strategy.get_module_state_dict(model).keys()
    return float(mean_loss)


def main() -> None:
    strategy_cls = get_strategy_spec("ddp").load()
    strategy = strategy_cls(
        accelerator="cpu",
        devices=[torch.device("cpu")] * 2,
        precision=get_precision("32-true", "cpu"),
    )
    checkpoint = Path(tempfile.gettempdir()) / "lite_strategies_readme_example.ckpt"
    assert strategy.launcher is not None
    loss = strategy.launcher.launch(train, strategy, checkpoint)
    if strategy.is_global_zero:
        print(f"world size {strategy.world_size}, final loss {loss:.4f}, checkpoint {checkpoint}")
    strategy.teardown()


if __name__ == "__main__":
    main()
