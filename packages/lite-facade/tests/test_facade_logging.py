"""self.log / self.log_dict to the loggers (rank 0 only, reduce across ranks) and self.progress."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lite_facade._rank_zero as rz
from lite_facade import CSVLogger, LightningLite, PlainProgress, TensorBoardLogger
from lite_testing import run_processes

TIMEOUT = 120


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], int | None]] = []
        self.finalized = False

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))

    def finalize(self) -> None:
        self.finalized = True


def test_csv_logger_gets_numbers_and_widens_its_header(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    recorder = Recorder()

    def body(self: Lite) -> None:
        self.log("loss", torch.tensor(0.5), step=0)
        self.log_dict({"loss": torch.tensor([0.25]), "acc": 1}, step=1)
        self.log("lr", 0.1)

    lite = Lite(accelerator="cpu", loggers=[logger, recorder])
    lite.run(body)
    assert lite.logger is logger and lite.loggers == [logger, recorder]
    assert logger.metrics_file == tmp_path / "exp" / "version_0" / "metrics.csv"
    assert rows(logger.metrics_file) == [
        {"step": "0", "loss": "0.5", "acc": "", "lr": ""},
        {"step": "1", "loss": "0.25", "acc": "1", "lr": ""},
        {"step": "", "loss": "", "acc": "", "lr": "0.1"},
    ]
    assert recorder.calls[0] == ({"loss": 0.5}, 0) and type(recorder.calls[0][0]["loss"]) is float
    assert recorder.finalized  # at the end of run()
    assert CSVLogger(tmp_path, name="exp").version == 1  # the next run


def test_bad_loggers_and_values_are_refused() -> None:
    with pytest.raises(TypeError, match="has no log_metrics"):
        Lite(accelerator="cpu", loggers=[object()])

    def body(self: Lite) -> None:
        with pytest.raises(ValueError, match=r"a tensor of shape \(2,\) is not one value"):
            self.log("x", torch.ones(2))
        with pytest.raises(TypeError, match="str is not a number"):
            self.log("x", "high")
        with pytest.raises(ValueError, match="reduce='avg'"):
            self.log("x", 1.0, reduce="avg")

    Lite(accelerator="cpu", loggers=Recorder()).run(body)


def _log_two_ranks(rank: int, world_size: int, directory: str) -> None:
    def body(self: Lite) -> None:
        self.log("rank", self.global_rank, step=0)
        self.log("mean_rank", float(self.global_rank), step=0, reduce="mean")
        self.log_dict(
            {"sum": torch.tensor(self.global_rank + 1.0), "max": self.global_rank}, step=1, reduce="max"
        )

    Lite(accelerator="cpu", strategy="ddp", devices=world_size, loggers=CSVLogger(directory, version=0)).run(
        body
    )


def test_logged_on_rank_zero_only_and_reduced_first(tmp_path: Path) -> None:
    run_processes(_log_two_ranks, 2, str(tmp_path), init=False, timeout=TIMEOUT)
    logged = rows(tmp_path / "default" / "version_0" / "metrics.csv")
    assert [r["rank"] for r in logged] == ["0", "", ""]  # one row per call, rank 0's only
    assert logged[1]["mean_rank"] == "0.5"
    assert (logged[2]["sum"], logged[2]["max"]) == ("2.0", "1.0")


def test_tensorboard_logger_needs_tensorboard(tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(
            ModuleNotFoundError,
            match=r"pip install 'tensorboard>=2\.9' \(what the extra lite-facade\[tensorboard\] installs\)",
        ):
            TensorBoardLogger(tmp_path)
        return
    logger = TensorBoardLogger(tmp_path)
    Lite(accelerator="cpu", loggers=logger).run(lambda self: self.log("loss", torch.tensor(1.0), step=3))
    assert list(logger.log_dir.glob("events.out.tfevents.*"))


def test_progress_is_a_bar_on_rank_zero_with_tqdm_and_plain_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tqdm = pytest.importorskip("tqdm")
    lite = Lite(accelerator="cpu")
    bar = lite.progress(range(3), desc="epoch 0", disable=True)
    assert isinstance(bar, tqdm.tqdm) and list(bar) == [0, 1, 2]
    monkeypatch.setattr(Lite, "is_global_zero", property(lambda self: False))
    plain = lite.progress(range(3), desc="epoch 0")
    assert isinstance(plain, PlainProgress) and list(plain) == [0, 1, 2] and len(plain) == 3
    plain.set_postfix(loss=0.5)  # takes the calls a bar takes
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed
    assert isinstance(lite.progress([1]), PlainProgress)
    rz.set_rank(None)
