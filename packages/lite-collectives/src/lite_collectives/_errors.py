"""The exceptions lite_collectives raises."""

from __future__ import annotations


class CollectiveError(ValueError):
    """A collective or process-group call was asked for something it cannot do.

    Raised for an unknown reduce op, tensors whose shapes or dtypes differ across ranks where
    they must agree (the message lists every rank's shapes), a ``src`` outside the group, an
    unknown device type or an unavailable backend, or a second ``init_process_group`` whose
    settings conflict with the running group.
    """


class CollectiveTimeoutError(RuntimeError):
    """A wait ran out: not every rank reached a collective (or the rendezvous) in time.

    The message names the operation, the timeout, this rank and what to check.
    """


class ClusterEnvironmentError(ValueError):
    """A cluster environment cannot provide what a process group needs.

    Raised for a missing or malformed variable (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ...),
    an impossible rank/world size, or a main port that is already taken; the message names the
    variable or the address and port, and the fix.
    """


class CollectiveDivergenceError(CollectiveError):
    """The ranks called different collectives, or the same one with different shapes or dtypes.

    Raised on every waiting rank by the watchdog (within seconds, not at the timeout); the
    message is a table of each rank's sequence number, op, tensor shapes and call site.
    """


class ProcessGroupBrokenError(RuntimeError):
    """The process group can no longer run collectives.

    Raised when a rank's process has exited (the message names it), and by every collective
    after a timeout, a divergence or a lost rank has broken the group (the message says which
    and where). Destroy the group and start a new one, or end the run.
    """
