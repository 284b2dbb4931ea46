"""Functional collectives, process-group lifecycle and cluster environments for PyTorch.

Every collective is the identity (or a no-op) in a single process, so the same code runs with
and without ``torch.distributed``; every wait is bounded by a timeout, and a watchdog reports
ranks that diverge within seconds. Needs torch only (not numpy).
"""

from lite_collectives._collectives import all_gather, all_gather_uneven, all_reduce, barrier
from lite_collectives._environment import ClusterEnvironment
from lite_collectives._environments import (
    ENVIRONMENTS,
    KubeflowEnvironment,
    LightningEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)
from lite_collectives._errors import (
    ClusterEnvironmentError,
    CollectiveDivergenceError,
    CollectiveError,
    CollectiveTimeoutError,
    ProcessGroupBrokenError,
)
from lite_collectives._lifecycle import default_backend, destroy_process_group, init_process_group
from lite_collectives._objects import all_gather_object, broadcast, gather_object
from lite_collectives._ranks import (
    global_rank,
    is_global_zero,
    is_initialized,
    local_rank,
    node_rank,
    world_size,
)

__all__ = [
    # collectives
    "all_gather",
    "all_gather_uneven",
    "all_reduce",
    "broadcast",
    "gather_object",
    "all_gather_object",
    "barrier",
    # queries
    "is_initialized",
    "world_size",
    "global_rank",
    "local_rank",
    "node_rank",
    "is_global_zero",
    # lifecycle
    "init_process_group",
    "destroy_process_group",
    "default_backend",
    # errors
    "CollectiveError",
    "CollectiveTimeoutError",
    "CollectiveDivergenceError",
    "ProcessGroupBrokenError",
    "ClusterEnvironmentError",
    # environments
    "ClusterEnvironment",
    "LightningEnvironment",
    "LocalEnvironment",
    "TorchElasticEnvironment",
    "SLURMEnvironment",
    "LSFEnvironment",
    "KubeflowEnvironment",
    "MPIEnvironment",
    "detect_environment",
    "ENVIRONMENTS",
]
