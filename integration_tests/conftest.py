"""Settings for the whole integration suite."""

import torch

# Many tests fork ranks from the pytest process (ddp_fork). GNU OpenMP is not fork-safe: once a
# parallel region has run here (e.g. a float16 matmul of a single_device row), a forked child that
# enters one deadlocks in gomp_team_barrier_wait_end. With one intra-op thread in this process no
# OpenMP thread pool is ever created, so forking stays safe. (Spawned and script-launched ranks
# start fresh and keep torch's default.)
torch.set_num_threads(1)
