"""Where this process sits: from the process group when there is one, else from the environment."""

from __future__ import annotations

import os

import torch.distributed as dist

from lite_collectives._environment import env_int


def is_initialized() -> bool:
    """Whether torch.distributed is built in and a default process group is running."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes: the process group's size, else ``WORLD_SIZE``, else 1."""
    if is_initialized():
        return dist.get_world_size()
    return env_int("WORLD_SIZE", 1)


def global_rank() -> int:
    """This process's rank among all: the process group's rank, else ``RANK``, else 0."""
    if is_initialized():
        return dist.get_rank()
    return env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine: ``LOCAL_RANK``, else 0 (a process group does not know it)."""
    return env_int("LOCAL_RANK", 0)


def node_rank() -> int:
    """The index of this process's machine: ``NODE_RANK``, else ``GROUP_RANK`` (torchrun), else 0."""
    if "NODE_RANK" in os.environ:
        return env_int("NODE_RANK")
    return env_int("GROUP_RANK", 0)


def is_global_zero() -> bool:
    """Whether this is the process of global rank 0 (true in a single process)."""
    return global_rank() == 0
