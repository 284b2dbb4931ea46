"""Loggers for ``LightningLite(loggers=...)`` / ``self.log``, and the rank-zero progress bar.

- [`CSVLogger`][lite_facade.CSVLogger] (built in): one ``metrics.csv`` with a ``step`` column and a column per name.
- [`TensorBoardLogger`][lite_facade.TensorBoardLogger]: event files for TensorBoard; needs ``pip install 'tensorboard>=2.9'`` (the ``[tensorboard]`` extra).
- Anything with ``log_metrics(metrics, step)`` (and optionally ``finalize()``) is a logger too.

Loggers are written to on global rank 0 only; ``LightningLite.log`` does the rest (tensors to
numbers, the reduction across processes).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["CSVLogger", "Logger", "PlainProgress", "TensorBoardLogger", "progress_bar"]

_T = TypeVar("_T")


@runtime_checkable
class Logger(Protocol):
    """What ``LightningLite(loggers=...)`` accepts: an object with ``log_metrics``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record the values (plain numbers) of ``metrics`` at ``step`` (None: no step given)."""


def _next_version(root: Path) -> int:
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return max(taken, default=-1) + 1


class CSVLogger:
    """Write the logged values to ``<root_dir>/<name>/version_<n>/metrics.csv``.

    One row per ``log_metrics`` call: ``step`` and one column per metric name (empty where a row
    did not log that name). A new name rewrites the file with the wider header. The directory
    is created on the first write (on rank 0 only, when used through ``LightningLite``).

    Args:
        root_dir: where the runs go (default ``"lite_logs"``).
        name: the experiment's folder under ``root_dir``.
        version: the run's number; None: one more than the highest ``version_*`` already there.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] = "lite_logs",
        name: str = "default",
        version: int | None = None,
    ):
        self.root_dir = Path(root_dir)
        self.name = name
        self._version = version
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = ["step"]

    @property
    def version(self) -> int:
        """The run's number (fixed on first use)."""
        if self._version is None:
            self._version = _next_version(self.root_dir / self.name)
        return self._version

    @property
    def log_dir(self) -> Path:
        """The run's directory."""
        return self.root_dir / self.name / f"version_{self.version}"

    @property
    def metrics_file(self) -> Path:
        """The CSV file."""
        return self.log_dir / "metrics.csv"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append a row (rewrite the file when a name appears for the first time)."""
        row = {"step": "" if step is None else step, **metrics}
        new = [key for key in metrics if key not in self._columns]
        self._rows.append(row)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if new or not self.metrics_file.exists():
            self._columns.extend(new)
            with self.metrics_file.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
                writer.writeheader()
                writer.writerows(self._rows)
        else:
            with self.metrics_file.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, restval="").writerow(row)

    def finalize(self) -> None:
        """Nothing is buffered: every row is on disk when ``log_metrics`` returns."""


class TensorBoardLogger:
    """Write the logged values as TensorBoard scalars under ``<root_dir>/<name>/version_<n>``.

    Needs the ``tensorboard`` package (``pip install 'tensorboard>=2.9'``, what the extra ``lite-facade[tensorboard]`` installs); without it the
    constructor raises ``ModuleNotFoundError`` saying so. View with ``tensorboard --logdir <root_dir>``.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] = "lite_logs",
        name: str = "default",
        version: int | None = None,
    ):
        try:
            import tensorboard  # noqa: F401
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the tensorboard package, which is not installed: "
                "pip install 'tensorboard>=2.9' (what the extra lite-facade[tensorboard] installs), "
                "or use the built-in CSVLogger"
            ) from err
        self.root_dir = Path(root_dir)
        self.name = name
        self.version = _next_version(self.root_dir / name) if version is None else version
        self._writer: Any = None

    @property
    def log_dir(self) -> Path:
        """The run's directory (the event files)."""
        return self.root_dir / self.name / f"version_{self.version}"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add each value as a scalar at ``step``."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)

    def finalize(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class PlainProgress(Generic[_T]):
    """The iterable itself, with the calls a tqdm bar takes (``set_postfix``, ...) doing nothing.

    What [`LightningLite.progress`][lite_facade.LightningLite.progress] returns off rank 0, or when tqdm is not installed, so
    the same loop runs everywhere.
    """

    def __init__(self, iterable: Iterable[_T]) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[_T]:
        return iter(self.iterable)

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to show."""

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to show."""

    def update(self, n: float = 1) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(iterable: Iterable[_T], show: bool, desc: str | None = None, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` when ``show`` and tqdm is installed, else a [`PlainProgress`][lite_facade.PlainProgress]."""
    if show:
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            pass
        else:
            return tqdm(iterable, desc=desc, **kwargs)
    return PlainProgress(iterable)
