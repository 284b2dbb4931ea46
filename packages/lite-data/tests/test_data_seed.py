"""seed_everything, reset_seed and worker_init_function."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lite_data import SeedError, reset_seed, seed_everything, worker_init_function

try:  # lite-data does not need numpy; where it is installed, its generator is seeded too
    import numpy as np
except ImportError:
    np = None


def _draw() -> tuple[float, ...]:
    """One value from each generator seed_everything seeds: python, torch, and numpy where installed."""
    numpy = (float(np.random.rand()),) if np is not None else ()
    return (random.random(), float(torch.rand(1)), *numpy)


def test_seed_everything_seeds_every_generator_and_sets_env(seed_env: pytest.MonkeyPatch) -> None:
    assert seed_everything(123) == 123
    first = _draw()
    assert os.environ["PL_GLOBAL_SEED"] == "123"
    assert os.environ["PL_SEED_WORKERS"] == "0"
    seed_everything(123, workers=True)
    assert _draw() == first
    assert os.environ["PL_SEED_WORKERS"] == "1"
    seed_everything(124)
    assert _draw() != first


def test_seed_none_reads_env(seed_env: pytest.MonkeyPatch) -> None:
    seed_env.setenv("PL_GLOBAL_SEED", "77")
    assert seed_everything() == 77


def test_seed_none_without_env_picks_one_and_warns(seed_env: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="No seed given"):
        seed = seed_everything()
    assert 0 <= seed <= 2**32 - 1
    assert os.environ["PL_GLOBAL_SEED"] == str(seed)


@pytest.mark.parametrize("raw", ["abc", "-1", str(2**32), "1.5"])
def test_invalid_env_seed_warns_and_picks_one(seed_env: pytest.MonkeyPatch, raw: str) -> None:
    seed_env.setenv("PL_GLOBAL_SEED", raw)
    with pytest.warns(UserWarning, match="PL_GLOBAL_SEED"):
        seed = seed_everything()
    assert 0 <= seed <= 2**32 - 1


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "abc", object()])
def test_explicit_invalid_seed_raises(seed_env: pytest.MonkeyPatch, bad: object) -> None:
    with pytest.raises(SeedError, match=r"\[0, 4294967295\]|bool"):
        seed_everything(bad)  # type: ignore[arg-type]
    assert "PL_GLOBAL_SEED" not in os.environ


INTEGER_LIKES = [(0, 0), (2**32 - 1, 2**32 - 1), ("9", 9)] + ([(np.int64(5), 5)] if np is not None else [])


@pytest.mark.parametrize(("given", "expected"), INTEGER_LIKES)
def test_seed_accepts_integer_likes(seed_env: pytest.MonkeyPatch, given: object, expected: int) -> None:
    assert seed_everything(given) == expected  # type: ignore[arg-type]


def test_reset_seed_reapplies_env_seed(seed_env: pytest.MonkeyPatch) -> None:
    reset_seed()  # nothing set: no-op, no env written
    assert "PL_GLOBAL_SEED" not in os.environ
    seed_everything(5, workers=True)
    first = _draw()
    reset_seed()
    assert _draw() == first
    assert os.environ["PL_SEED_WORKERS"] == "1"


def _streams_after_worker_init(worker_id: int, rank: int, base_seed: int) -> tuple[float, ...]:
    torch.manual_seed(base_seed + worker_id)  # what torch does in worker ``worker_id``
    worker_init_function(worker_id, rank=rank)
    return _draw()


def test_worker_init_function_distinct_per_rank_and_worker_and_reproducible(
    seed_env: pytest.MonkeyPatch,
) -> None:
    keys = [(rank, worker) for rank in range(3) for worker in range(3)]
    draws = {key: _streams_after_worker_init(key[1], key[0], base_seed=1000) for key in keys}
    for generator in range(len(_draw())):  # each of random, torch (and numpy) separately
        values = [draw[generator] for draw in draws.values()]
        assert len(set(values)) == len(keys)
    assert _streams_after_worker_init(1, 2, base_seed=1000) == draws[(2, 1)]
    assert _streams_after_worker_init(1, 2, base_seed=1001) != draws[(2, 1)]


def test_worker_init_function_rank_defaults_to_env(seed_env: pytest.MonkeyPatch) -> None:
    seed_env.setenv("RANK", "2")
    from_env = _streams_after_worker_init(0, rank=None, base_seed=7)  # type: ignore[arg-type]
    assert from_env == _streams_after_worker_init(0, rank=2, base_seed=7)


class _RandomItems(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        return torch.tensor([info.id, *_draw()])


def _worker_draws(rank: int) -> torch.Tensor:
    import functools

    loader = DataLoader(
        _RandomItems(),
        batch_size=1,
        num_workers=2,
        worker_init_fn=functools.partial(worker_init_function, rank=rank),
        multiprocessing_context="fork",
    )
    return torch.cat(list(loader))


def test_two_workers_have_distinct_reproducible_streams(seed_env: pytest.MonkeyPatch) -> None:
    seed_everything(3)
    first = _worker_draws(rank=0)
    seed_everything(3)
    assert torch.equal(_worker_draws(rank=0), first)
    worker0, worker1 = first[first[:, 0] == 0, 1:], first[first[:, 0] == 1, 1:]
    assert len(worker0) == len(worker1) == 4
    assert not set(worker0.flatten().tolist()) & set(worker1.flatten().tolist())
    seed_everything(3)
    other_rank = _worker_draws(rank=1)
    assert not set(other_rank[:, 1:].flatten().tolist()) & set(first[:, 1:].flatten().tolist())


def test_import_is_light() -> None:
    code = (
        "import sys, lite_data\n"
        "lite = sorted({m.split('.')[0] for m in sys.modules if m.startswith('lite_')})\n"
        "assert lite == ['lite_data', 'lite_devices'], lite\n"
        "print(lite)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
