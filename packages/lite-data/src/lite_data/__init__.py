"""lite_data: distributed sampling for any DataLoader, a loader that yields batches on a device,
seeding of processes and DataLoader workers, and resumable sampling state.

Depends on torch and lite_devices only; NumPy is seeded when installed, never required.
"""

from lite_data._distributed import distributed_dataloader, has_iterable_dataset
from lite_data._errors import DataLoaderError, SeedError, UnsizedSamplerError
from lite_data._loader import DeviceDataLoader
from lite_data._record import record_dataloader_arguments, recorded_arguments
from lite_data._rng import rng_states, set_rng_states
from lite_data._sampler import DistributedSamplerWrapper, UnpaddedDistributedSampler
from lite_data._seed import reset_seed, seed_everything, worker_init_function

__all__ = [
    "DataLoaderError",
    "DeviceDataLoader",
    "DistributedSamplerWrapper",
    "SeedError",
    "UnpaddedDistributedSampler",
    "UnsizedSamplerError",
    "distributed_dataloader",
    "has_iterable_dataset",
    "record_dataloader_arguments",
    "recorded_arguments",
    "reset_seed",
    "rng_states",
    "seed_everything",
    "set_rng_states",
    "worker_init_function",
]
