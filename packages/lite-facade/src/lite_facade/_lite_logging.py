"""LightningLite's logging and progress: log, log_dict, loggers, progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lite_facade._lite_parts import LiteParts
from lite_facade._logging import progress_bar


class LoggingMethods(LiteParts):
    """Logging and progress of [`LightningLite`][lite_facade.LightningLite] (a part of it, kept in its own module)."""

    if TYPE_CHECKING:  # provided by LightningLite
        _loggers: list[Any]

        def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any: ...

    # -- logging and progress -----------------------------------------------------------------------

    @property
    def loggers(self) -> list[Any]:
        """The loggers given as ``LightningLite(loggers=...)``."""
        return list(self._loggers)

    @property
    def logger(self) -> Any:
        """The first logger, or None."""
        return self._loggers[0] if self._loggers else None

    def log(self, name: str, value: Any, step: int | None = None, reduce: str | None = None) -> None:
        """Log one value (a number or a one-element tensor) to every logger, on global rank 0.

        With ``reduce`` (``"mean"``, ``"sum"``, ``"max"``, ``"min"``) the value is reduced over every
        process first: then every process must call it, as for [`all_reduce`][lite_facade.LightningLite.all_reduce].
        """
        self.log_dict({name: value}, step=step, reduce=reduce)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None, reduce: str | None = None) -> None:
        """Log several values at once (see [`log`][lite_facade.LightningLite.log]); tensors become Python numbers."""
        if not isinstance(metrics, dict):
            raise TypeError(f"log_dict() takes a dict of name -> value, got {type(metrics).__name__}")
        if reduce is not None:
            if reduce not in ("mean", "sum", "max", "min"):
                raise ValueError(f"log(reduce={reduce!r}): expected 'mean', 'sum', 'max' or 'min'")
            metrics = {
                key: self.all_reduce(
                    torch.as_tensor(value, dtype=torch.float64).to(self.device), reduce_op=reduce
                )
                for key, value in metrics.items()
            }
        if not self.is_global_zero or not self._loggers:
            return
        numbers = {key: _as_number(key, value) for key, value in metrics.items()}
        for logger in self._loggers:
            logger.log_metrics(numbers, step=step)

    def _finalize_loggers(self) -> None:
        if self.is_global_zero:
            for logger in self._loggers:
                finalize = getattr(logger, "finalize", None)
                if callable(finalize):
                    finalize()

    def progress(self, iterable: Any, desc: str | None = None, **tqdm_kwargs: Any) -> Any:
        """Iterate with a tqdm progress bar on global rank 0 (when tqdm is installed); plainly elsewhere.

        The returned object always takes ``set_postfix(loss=...)`` and ``set_description(...)``
        (doing nothing without a bar), so one loop serves every process. ``tqdm_kwargs`` go to tqdm.
        """
        return progress_bar(iterable, self.is_global_zero, desc=desc, **tqdm_kwargs)


def check_loggers(loggers: Any) -> list[Any]:
    if loggers is None:
        return []
    found = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    for logger in found:
        if not callable(getattr(logger, "log_metrics", None)):
            raise TypeError(
                f"loggers: {type(logger).__name__} has no log_metrics(metrics, step) method; pass "
                "lite_facade.CSVLogger(...), lite_facade.TensorBoardLogger(...) or an object with that method"
            )
    return found


def _as_number(name: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"log({name!r}, ...): a tensor of shape {tuple(value.shape)} is not one value; "
                "log a number or a one-element tensor (e.g. loss.mean())"
            )
        return value.detach().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log({name!r}, ...): {type(value).__name__} is not a number") from None
    return value
