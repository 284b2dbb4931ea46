"""lite-data alone: distributed sampling, device loading and seeding in a plain PyTorch loop.

    python examples/data_alone.py

No facade and no process group: `distributed_dataloader` only needs to be told how many
replicas there are and which one this is, so one process can show what each of two ranks
would get (under torchrun you would pass dist.get_world_size() and dist.get_rank()).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lite_data import DeviceDataLoader, distributed_dataloader, seed_everything


def make_loader() -> DataLoader:
    """An ordinary DataLoader, built the way you already build yours."""
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    y = 3 * x + 0.5
    indices = torch.arange(64).unsqueeze(1)  # carried along to show which samples a rank sees
    return DataLoader(TensorDataset(x, y, indices), batch_size=8, shuffle=True)


def main() -> None:
    seed_everything(42)  # random, NumPy and torch; DataLoader workers too with workers=True
    device = torch.device("cpu")  # e.g. torch.device("cuda", local_rank)

    # 1. The same loader as two ranks of a job would see it: disjoint halves, reshuffled per epoch.
    views = [
        DeviceDataLoader(distributed_dataloader(make_loader(), num_replicas=2, rank=r), device)
        for r in (0, 1)
    ]
    epochs: list[list[set[int]]] = [[], []]
    for rank, loader in enumerate(views):
        for _ in range(2):  # each new iteration is a new epoch (set_epoch is called for you)
            epochs[rank].append({int(i) for _, _, idx in loader for i in idx})
    print(f"samples per rank: {[len(e[0]) for e in epochs]}")
    print(
        f"ranks disjoint: {not (epochs[0][0] & epochs[1][0])}, together all 64: {len(epochs[0][0] | epochs[1][0]) == 64}"
    )
    order = [[int(i) for _, _, idx in views[0] for i in idx] for _ in range(2)]
    print(f"rank 0 reshuffled between epochs: {order[0] != order[1]}")

    # 2. A plain training loop on rank 0's share, batches arriving on `device`.
    seed_everything(42)
    model = nn.Linear(1, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    loader = DeviceDataLoader(distributed_dataloader(make_loader(), num_replicas=2, rank=0), device)
    for _ in range(30):
        for x, y, _ in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
    print(f"learned y = {model.weight.item():.2f} x + {model.bias.item():.2f} (true: 3.00 x + 0.50)")

    # 3. Where sampling stands, to save with a checkpoint and resume mid-epoch.
    print(f"loader state: epoch {loader.state_dict()['epoch']}")


if __name__ == "__main__":
    main()
