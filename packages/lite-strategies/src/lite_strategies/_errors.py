"""The errors lite_strategies raises."""

from __future__ import annotations


class StrategyError(ValueError):
    """A strategy was asked for something it cannot do here (bad name, kwargs, devices, backend)."""


class CheckpointError(ValueError):
    """A checkpoint file is truncated, is not a checkpoint, or holds objects that need an explicit opt-in."""


class ProcessFailedError(RuntimeError):
    """A launched process raised, was killed or exited non-zero; the others were stopped.

    ``rank`` is the global rank that failed first, ``exitcode`` its exit code (negative: the
    signal that killed it; None when it raised and reported), ``remote_traceback`` the
    formatted traceback it sent (empty when it died without reporting).
    """

    def __init__(
        self, message: str, *, rank: int, exitcode: int | None = None, remote_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:  # keep the keyword fields through pickling
        return (_rebuild_process_failed, (str(self), self.rank, self.exitcode, self.remote_traceback))


def _rebuild_process_failed(
    message: str, rank: int, exitcode: int | None, remote_traceback: str
) -> ProcessFailedError:
    return ProcessFailedError(message, rank=rank, exitcode=exitcode, remote_traceback=remote_traceback)
