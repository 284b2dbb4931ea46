"""The same loop converted to LightningLite in the spec's 5 steps (diff it against train_torch.py).

python train_lite.py                                             # one CPU process
python train_lite.py --strategy ddp --devices 2 --accelerator cpu # DDP on 2 CPU processes
lite run --accelerator cpu --devices 2 train_lite.py             # the same, started by torchrun

It prints what it runs with, shows the loss in a progress bar (rank 0 only; tqdm if installed) and
logs it to lite_logs/digits/version_<n>/metrics.csv.
"""

import argparse

import torch
from data import SmallCNN, digits_datasets
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lite_facade import CSVLogger, LightningLite


class Lite(LightningLite):  # 1. subclass LightningLite, 2. move the body into run()
    def run(self, args: argparse.Namespace) -> float:
        self.print(
            f"strategy: {self.plan.strategy}, devices: {self.world_size} x {self.plan.accelerator}, "
            f"precision: {self.plan.precision}"
        )
        self.seed_everything(args.seed)
        train_set, test_set = digits_datasets()
        model = SmallCNN()  # 3. no .to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        model, optimizer = self.setup(model, optimizer)  # 4. setup() and setup_dataloaders()
        train_loader = self.setup_dataloaders(DataLoader(train_set, batch_size=args.batch_size, shuffle=True))
        # even=False: each process evaluates a disjoint share with no padded repeats
        test_loader = self.setup_dataloaders(DataLoader(test_set, batch_size=256), even=False)

        model.train()
        step = 0
        for epoch in range(args.epochs):
            bar = self.progress(train_loader, desc=f"epoch {epoch}")  # a bar on rank 0 only
            for x, y in bar:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                self.backward(loss)  # 4. instead of loss.backward()
                optimizer.step()
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    self.log("train_loss", loss, step=step)  # written on rank 0 only
                step += 1
            # the epoch's last loss, averaged over the processes (every process calls it)
            self.log("epoch_loss", loss, step=step, reduce="mean")

        model.eval()
        hits = []
        with torch.no_grad():
            for x, y in test_loader:
                hits.append(model(x).argmax(1) == y)
        # Each process saw its share of the test set: gather every sample's result exactly once.
        all_hits = self.gather_for_metrics(torch.cat(hits))
        assert len(all_hits) == len(test_set)
        accuracy = all_hits.float().mean().item()
        self.print(f"test accuracy: {accuracy:.3f}")
        return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    # Unset flags stay LightningLite's defaults, so that `lite run --devices 2 ...` can set them.
    parser.add_argument("--accelerator", default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", default=None)
    parser.add_argument("--precision", default=None)
    args = parser.parse_args()
    flags = dict(
        accelerator=args.accelerator, strategy=args.strategy, devices=args.devices, precision=args.precision
    )
    lite = Lite(
        **{k: v for k, v in flags.items() if v is not None}, loggers=CSVLogger("lite_logs", name="digits")
    )
    lite.run(args)  # 5. instantiate and call run()
