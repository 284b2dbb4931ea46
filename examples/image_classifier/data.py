"""scikit-learn's handwritten digits (shipped inside the package: no download) as tensors."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset


def digits_datasets(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """1,797 8x8 grey images in 10 classes, split 80/20 into train and test."""
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )

    def to_dataset(x, y) -> TensorDataset:  # type: ignore[no-untyped-def]
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        return TensorDataset(x, torch.tensor(y, dtype=torch.long))

    return to_dataset(x_train, y_train), to_dataset(x_test, y_test)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
