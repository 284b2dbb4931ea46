"""Exact distributed evaluation: setup_dataloaders(even=False) + gather_for_metrics, on 2 gloo processes."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from lite_facade import LightningLite
from lite_testing import run_processes

TIMEOUT = 120


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


def _evaluate(rank: int, world_size: int, even: bool) -> dict[str, Any]:
    def body(self: Lite) -> dict[str, Any]:
        x = torch.arange(7.0)
        labels = torch.tensor([0, 1, 0, 1, 1, 1, 0])
        predictions_of = (x >= 3).long()  # "the model": [0, 0, 0, 1, 1, 1, 1], right on samples 0, 2, 3, 4, 5
        loader = self.setup_dataloaders(DataLoader(TensorDataset(x, labels), batch_size=2), even=even)
        seen, predictions, targets = [], [], []
        for xb, yb in loader:
            seen.append(xb)
            predictions.append(predictions_of[xb.long()])
            targets.append(yb)
        local = {"x": torch.cat(seen), "pred": torch.cat(predictions), "y": torch.cat(targets)}
        gathered = self.gather_for_metrics(local)
        return {
            "local": len(local["x"]),
            "x": gathered["x"].tolist(),
            "count": len(gathered["y"]),
            "correct": int((gathered["pred"] == gathered["y"]).sum()),
            "padded_count": int(self.all_reduce(torch.tensor(len(local["x"])), reduce_op="sum")),
        }

    return Lite(accelerator="cpu", strategy="ddp", devices=world_size).run(body)


def test_seven_samples_on_two_ranks_count_seven() -> None:
    results = run_processes(_evaluate, 2, False, init=False, timeout=TIMEOUT)
    assert [r["local"] for r in results] == [4, 3]  # disjoint, no padding
    for r in results:
        assert r["count"] == 7 and r["padded_count"] == 7
        assert r["x"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # each sample once, in the dataset's order
        assert r["correct"] == 5  # accuracy 5/7, not 5/8 or 6/8


def test_the_default_pads_and_counts_a_sample_twice() -> None:
    results = run_processes(_evaluate, 2, True, init=False, timeout=TIMEOUT)
    assert [r["local"] for r in results] == [4, 4]
    assert results[0]["padded_count"] == 8  # what even=False avoids


def test_one_process_returns_the_data_as_they_are() -> None:
    def body(self: Lite) -> None:
        data = {"a": torch.arange(3)}
        assert self.gather_for_metrics(data) is data
        loader = self.setup_dataloaders(DataLoader(range(5), batch_size=2), even=False)
        assert [int(i) for b in loader for i in b] == [0, 1, 2, 3, 4]

    Lite(accelerator="cpu").run(body)
