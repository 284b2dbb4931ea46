"""Test helpers shared by the lite packages (unpublished).

- `free_port` finds a TCP port on 127.0.0.1 that nobody listens on.
- `run_processes` runs a function in N real processes joined by a gloo process
  group on 127.0.0.1 and returns each rank's result, with every wait bounded.
- `run_if` is one marker that gathers every skip reason.
"""

from lite_testing._processes import DistributedTestError, free_port, run_processes
from lite_testing._run_if import run_if

__all__ = ["DistributedTestError", "free_port", "run_if", "run_processes"]
