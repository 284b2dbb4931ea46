"""The same loop converted to LightningLite in the spec's 5 steps (diff it against train_torch.py).

python train_lite.py                                             # one CPU process
python train_lite.py --strategy ddp --devices 2 --accelerator cpu # DDP on 2 CPU processes
"""

import argparse

import torch
from data import SmallCNN, digits_datasets
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from lite_facade import LightningLite


class Lite(LightningLite):  # 1. subclass LightningLite, 2. move the body into run()
    def run(self, args: argparse.Namespace) -> float:
        self.seed_everything(args.seed)
        train_set, test_set = digits_datasets()
        model = SmallCNN()  # 3. no .to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        model, optimizer = self.setup(model, optimizer)  # 4. setup() and setup_dataloaders()
        train_loader, test_loader = self.setup_dataloaders(
            DataLoader(train_set, batch_size=args.batch_size, shuffle=True),
            DataLoader(test_set, batch_size=256),
        )

        model.train()
        for epoch in range(args.epochs):
            for x, y in tqdm(train_loader, desc=f"epoch {epoch}", disable=not self.is_global_zero):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                self.backward(loss)  # 4. instead of loss.backward()
                optimizer.step()

        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum()
        # Each process saw its share of the test set: add the counts up.
        total_correct = int(self.all_gather(correct).sum())
        accuracy = total_correct / len(test_set)
        self.print(f"test accuracy: {accuracy:.3f}")
        return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", default=1)
    parser.add_argument("--precision", default="32")
    args = parser.parse_args()
    lite = Lite(
        accelerator=args.accelerator, strategy=args.strategy, devices=args.devices, precision=args.precision
    )
    lite.run(args)  # 5. instantiate and call run()
