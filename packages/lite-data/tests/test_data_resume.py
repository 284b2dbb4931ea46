"""Mid-epoch resume: index-level skip, the order of a loader shuffled by the global RNG, RNG states."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lite_data import DeviceDataLoader, SeedError, rng_states, set_rng_states


class _Counting(Dataset[torch.Tensor]):
    """Records which indices were loaded (in this process)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        self.loaded.append(i)
        return torch.tensor([float(i)])


def _interrupted(make: Any, stop_after: int, epochs_before: int = 0) -> tuple[list[Any], list[Any]]:
    """(batches of an uninterrupted epoch, the same epoch from a resume after ``stop_after`` batches)."""
    torch.manual_seed(0)
    reference = DeviceDataLoader(make())
    for _ in range(epochs_before):
        list(reference)
    expected = [b.flatten().tolist() for b in reference]

    torch.manual_seed(0)
    first = DeviceDataLoader(make())
    for _ in range(epochs_before):
        list(first)
    it = iter(first)
    seen = [next(it).flatten().tolist() for _ in range(stop_after)]
    state = first.state_dict()
    rng = torch.get_rng_state()  # what a checkpoint's RNG part restores

    torch.manual_seed(12345)  # a new process starts elsewhere
    resumed = DeviceDataLoader(make())
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    rest = [b.flatten().tolist() for b in resumed]
    return expected, seen + rest


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("epochs_before", [0, 1])
def test_a_loader_shuffled_by_the_global_rng_resumes_in_the_same_order(
    num_workers: int, epochs_before: int
) -> None:
    def make() -> DataLoader[Any]:
        return DataLoader(list(range(20)), batch_size=3, shuffle=True, num_workers=num_workers)

    expected, resumed = _interrupted(make, stop_after=2, epochs_before=epochs_before)
    assert resumed == expected


def test_the_skipped_batches_are_never_loaded() -> None:
    data = _Counting(12)
    loader = DeviceDataLoader(DataLoader(data, batch_size=2, shuffle=True))
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    data.loaded.clear()
    resumed = DeviceDataLoader(DataLoader(data, batch_size=2, shuffle=True))
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 2 and len(data.loaded) == 4  # the last two batches only
    assert resumed.state_dict()["epoch"] == 1


def test_the_training_rng_is_left_as_the_checkpoint_restored_it() -> None:
    loader = DeviceDataLoader(DataLoader(list(range(10)), batch_size=2, shuffle=True))
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = DeviceDataLoader(DataLoader(list(range(10)), batch_size=2, shuffle=True))
    resumed.load_state_dict(state)
    torch.manual_seed(7)
    after_restore = torch.get_rng_state()
    next(iter(resumed))
    assert torch.equal(torch.get_rng_state(), after_restore)


def test_a_subclass_or_iterable_dataset_falls_back_to_loading_and_dropping() -> None:
    class MyLoader(DataLoader[Any]):
        pass

    expected, resumed = _interrupted(
        lambda: MyLoader(list(range(9)), batch_size=2, shuffle=True), stop_after=3
    )
    assert resumed == expected


def test_rng_states_round_trip_python_torch_and_numpy() -> None:
    states = rng_states()
    a = (random.random(), torch.rand(3).tolist())
    set_rng_states(states)
    assert (random.random(), torch.rand(3).tolist()) == a
    np = pytest.importorskip("numpy")
    states = rng_states()
    a = (random.random(), torch.rand(3).tolist(), np.random.rand(2).tolist())
    set_rng_states(states)
    assert (random.random(), torch.rand(3).tolist(), np.random.rand(2).tolist()) == a


def test_rng_states_load_under_weights_only(tmp_path: Any) -> None:
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    b = torch.rand(2)
    set_rng_states(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(2), b)
    with pytest.raises(SeedError, match="rng_states"):
        set_rng_states({"nope": 1})
