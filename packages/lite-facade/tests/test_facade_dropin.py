"""What LightningLite users rely on: calls outside run(), the sampler's seed, the wrappers' types and
attributes, DataLoader subclasses created in run(), and clear errors (issue 18)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import lite_data
from lite_facade import LightningLite
from lite_testing import free_port

TIMEOUT = 180  # a two-process run on a loaded machine; never a bound on speed
PACKAGES = (
    "lite_facade",
    "lite_strategies",
    "lite_collectives",
    "lite_data",
    "lite_precision",
    "lite_devices",
)


class Lite(LightningLite):
    def run(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let a test call seed_everything: the variables it sets are restored afterwards."""
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    yield


def _child_env() -> dict[str, str]:
    rank_vars = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"}
    rank_vars |= {
        "LOCAL_WORLD_SIZE",
        "TORCHELASTIC_RUN_ID",
        "SLURM_NTASKS",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
    }
    env = {k: v for k, v in os.environ.items() if k not in rank_vars}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _results(stdout: str) -> list[dict[str, Any]]:
    found = [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    return sorted(found, key=lambda r: (r.get("seed", 0), r["rank"]))


def _flat(lists: list[list[int]]) -> list[int]:
    return [item for part in lists for item in part]


def _expected_order(size: int, rank: int, seed: int) -> list[int]:
    sampler = DistributedSampler(list(range(size)), num_replicas=2, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(0)
    return list(sampler)


# -- 1. calls outside run() ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_fork", "dp"])
def test_setup_dataloaders_outside_run_needs_no_process_group(strategy: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # strategy="dp" on the CPU runs as "ddp", with a warning
        lite = Lite(accelerator="cpu", strategy=strategy, devices=2)
    loader = lite.setup_dataloaders(DataLoader(list(range(10)), batch_size=2, shuffle=True))
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank) == (2, 0)
    assert len(list(loader)) == 3  # rank 0's five of the ten items, in batches of two
    assert not dist.is_initialized()


def test_everything_works_outside_run_in_one_process(tmp_path: Path) -> None:
    lite = Lite(accelerator="cpu")
    model, optimizer = lite.setup(*_model_and_optimizer())
    loader = lite.setup_dataloaders(DataLoader(list(range(4)), batch_size=2))
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert lite.all_gather(torch.tensor(3)).tolist() == 3
    assert lite.all_reduce(torch.tensor(2.0)).item() == 2.0
    assert lite.broadcast("x") == "x"
    lite.barrier()
    lite.save({"model": model, "optimizer": optimizer}, tmp_path / "c.pt")
    assert set(lite.load(tmp_path / "c.pt")) == {"model", "optimizer"}


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_calls_needing_the_processes_refuse_outside_run_under_spawn_and_fork(
    strategy: str, tmp_path: Path
) -> None:
    lite = Lite(accelerator="cpu", strategy=strategy, devices=2)
    calls = {
        "setup()": lambda: lite.setup(nn.Linear(2, 1)),
        "barrier()": lambda: lite.barrier(),
        "all_gather()": lambda: lite.all_gather(torch.tensor(1)),
        "broadcast()": lambda: lite.broadcast(1),
        "all_reduce()": lambda: lite.all_reduce(torch.tensor(1.0)),
        "save()": lambda: lite.save({"a": 1}, tmp_path / "c.pt"),
    }
    for name, call in calls.items():
        with pytest.raises(
            RuntimeError, match=rf"{name.replace('(', '[(]').replace(')', '[)]')}.*inside `run\(\)`"
        ):
            call()
    assert not (tmp_path / "c.pt").exists()
    assert not dist.is_initialized()


_EMBEDDED = """
import json, os, sys
import torch
from torch import nn
from torch.utils.data import DataLoader
from lite_facade import LightningLite

class Lite(LightningLite):
    def run(self):
        raise AssertionError("never called")

# A framework that embeds the facade: it never calls run(); torchrun started the processes.
lite = Lite(accelerator="cpu", strategy="ddp", devices=2)
model = nn.Linear(2, 1)
model, optimizer = lite.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
loader = lite.setup_dataloaders(DataLoader(list(range(8)), batch_size=2))
seen = [int(i) for batch in loader for i in batch]
loss = model(torch.full((1, 2), float(lite.global_rank + 1))).sum()
lite.backward(loss)
optimizer.step()
lite.save({"model": model}, sys.argv[1])
result = {
    "rank": lite.global_rank,
    "world_size": lite.world_size,
    "seen": lite.all_gather(torch.tensor(seen)).tolist(),
    "summed": lite.all_reduce(torch.tensor(float(lite.global_rank)), reduce_op="sum").item(),
    "object": lite.broadcast("from %d" % lite.global_rank),
    "weight": model.module.weight.detach().flatten().tolist(),
}
lite.barrier()
os.write(1, ("RESULT " + json.dumps(result) + "\\n").encode())  # one write: the ranks share stdout
"""


def test_embedded_without_run_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "embedded.py"
    script.write_text(_EMBEDDED)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path / "c.pt")],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = _results(proc.stdout)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world_size"] == 2 and r["summed"] == 1.0 and r["object"] == "from 0"
        assert sorted(_flat(r["seen"])) == list(range(8))  # the ranks' shares are disjoint
    assert results[0]["weight"] == results[1]["weight"]  # DDP averaged the gradients
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved["model"]["weight"].flatten().tolist() == pytest.approx(results[0]["weight"])


# -- 2. the sampler's seed --------------------------------------------------------------------------


@pytest.mark.usefixtures("seed_env")
def test_sampler_seed_comes_from_seed_everything_outside_run() -> None:
    def order(seed: int) -> list[int]:
        LightningLite.seed_everything(seed)
        lite = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2)
        loader = lite.setup_dataloaders(DataLoader(list(range(32)), shuffle=True))
        return [int(b) for b in loader]

    assert order(1) == order(1) == _expected_order(32, 0, 1)
    assert order(1) != order(2) == _expected_order(32, 0, 2)


@pytest.mark.usefixtures("seed_env")
def test_seed_everything_gives_set_up_loaders_a_per_rank_worker_init_fn() -> None:
    LightningLite.seed_everything(3)
    loader = Lite(accelerator="cpu").setup_dataloaders(DataLoader(list(range(4))))
    assert loader.worker_init_fn.func is lite_data.worker_init_function
    assert loader.worker_init_fn.keywords == {"rank": 0}

    def own(worker_id: int) -> None:
        return None

    kept = Lite(accelerator="cpu").setup_dataloaders(DataLoader(list(range(4)), worker_init_fn=own))
    assert kept.worker_init_fn is own


def _seeded_body(self: Lite, seed: int | None) -> dict[str, Any]:
    if seed is not None:
        self.seed_everything(seed)
    loader = self.setup_dataloaders(DataLoader(list(range(16)), shuffle=True))
    order = torch.tensor([int(b) for b in loader])
    return {"orders": self.all_gather(order).tolist(), "seed": loader.sampler.seed}


@pytest.mark.usefixtures("seed_env")
def test_sampler_seed_in_spawned_processes() -> None:
    lite = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2)
    seeded_inside = lite.run(_seeded_body, 5)
    assert seeded_inside["seed"] == 5
    assert seeded_inside["orders"] == [_expected_order(16, 0, 5), _expected_order(16, 1, 5)]
    LightningLite.seed_everything(6)  # in the parent: the spawned processes inherit the seed
    seeded_before = lite.run(_seeded_body, None)
    assert seeded_before["orders"] == [_expected_order(16, 0, 6), _expected_order(16, 1, 6)]
    assert seeded_before["orders"] != seeded_inside["orders"]


# -- 3. the set-up module's device and dtype -------------------------------------------------------------


def test_set_up_module_has_device_and_dtype_that_follow_the_wrapper() -> None:
    lite = Lite(accelerator="cpu")
    model = lite.setup(nn.Linear(2, 3))
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.double()
    assert model.dtype == torch.float64 and model.module.weight.dtype == torch.float64
    model.half()
    assert model.dtype == torch.float16
    model.to(torch.float32)
    assert model.dtype == torch.float32
    empty = lite.setup(nn.ReLU())  # nothing to read the device and dtype from: the calls say
    assert empty.device == torch.device("cpu") and empty.dtype == torch.float32
    empty.to(torch.float64)
    assert empty.dtype == torch.float64


def test_set_up_module_reports_the_precision_dtype() -> None:
    assert Lite(accelerator="cpu", precision=64).setup(nn.Linear(2, 1)).dtype == torch.float64
    assert Lite(accelerator="cpu", precision="bf16-true").setup(nn.Linear(2, 1)).dtype == torch.bfloat16


# -- 5. the set-up optimizer -------------------------------------------------------------------------


def _model_and_optimizer(cls: type[torch.optim.Optimizer] = torch.optim.SGD) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return model, cls(model.parameters(), lr=0.1)


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_set_up_optimizer_is_an_instance_of_the_original_class(cls: type[torch.optim.Optimizer]) -> None:
    model, original = _model_and_optimizer(cls)
    _, optimizer = Lite(accelerator="cpu").setup(model, original)
    assert isinstance(optimizer, cls) and isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.optimizer is original and type(original) is cls  # the user's object is unchanged
    assert optimizer.param_groups is original.param_groups and optimizer.state is original.state
    assert optimizer.defaults is original.defaults
    _, again = Lite(accelerator="cpu").setup(*_model_and_optimizer(cls))
    assert type(again) is type(optimizer)  # one class per optimizer class


def test_set_up_optimizer_keeps_state_groups_and_schedulers_working(tmp_path: Path) -> None:
    lite = Lite(accelerator="cpu")
    model, optimizer = lite.setup(*_model_and_optimizer(torch.optim.Adam))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        lite.backward(model(torch.ones(2, 4)).sum())
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(p.grad is None for p in model.parameters())
    assert len(optimizer.state) == 2
    state = optimizer.state_dict()
    assert state["state"][0]["step"].item() == 2
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0})
    assert len(optimizer.optimizer.param_groups) == 2
    optimizer.param_groups[0]["lr"] = 0.3  # written through to the original
    assert optimizer.optimizer.param_groups[0]["lr"] == 0.3
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03)
    restored = pickle.loads(pickle.dumps(optimizer))
    assert isinstance(restored, torch.optim.Adam) and restored.param_groups[0]["lr"] == pytest.approx(0.03)
    assert isinstance(copy.deepcopy(optimizer), torch.optim.Adam)
    assert "Adam" in repr(optimizer) and "_LiteAdam" in type(optimizer).__name__


def _optimizer_type_body(self: Lite) -> dict[str, Any]:
    model, optimizer = self.setup(*_model_and_optimizer(torch.optim.SGD))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    self.backward(model(torch.ones(1, 4)).sum())
    optimizer.step()
    scheduler.step()
    return {"sgd": isinstance(optimizer, torch.optim.SGD), "lr": optimizer.param_groups[0]["lr"]}


def test_set_up_optimizer_type_in_spawned_processes() -> None:
    out = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2).run(_optimizer_type_body)
    assert out == {"sgd": True, "lr": pytest.approx(0.05)}


# -- 6. DataLoader subclasses created inside run() -----------------------------------------------------


class FolderLoader(DataLoader):
    """Takes a required argument that it uses but does not store."""

    def __init__(self, size: int, batch_size: int = 1, **kwargs: Any) -> None:
        super().__init__(list(range(100, 100 + size)), batch_size=batch_size, **kwargs)


def _subclass_body(self: Lite) -> dict[str, Any]:
    class InnerLoader(DataLoader):  # defined while run() executes
        def __init__(self, prefix: int, *, shuffle: bool = False, sampler: Any = None) -> None:
            super().__init__(list(range(prefix, prefix + 6)), shuffle=shuffle, sampler=sampler)

    outer = self.setup_dataloaders(FolderLoader(8, batch_size=2, shuffle=True))
    inner = self.setup_dataloaders(InnerLoader(50))
    outer_seen = torch.tensor([int(i) for batch in outer for i in batch])
    inner_seen = torch.tensor([int(i) for batch in inner for i in batch])
    return {
        "types": [type(outer.dataloader).__name__, type(inner.dataloader).__name__],
        "samplers": [type(outer.sampler).__name__, type(inner.sampler).__name__],
        "outer": self.all_gather(outer_seen).tolist(),
        "inner": self.all_gather(inner_seen).tolist(),
    }


def test_dataloader_subclass_created_in_run_gets_a_distributed_sampler() -> None:
    out = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2).run(_subclass_body)
    assert out["types"] == ["FolderLoader", "InnerLoader"]
    assert out["samplers"] == ["DistributedSampler", "DistributedSampler"]
    assert sorted(_flat(out["outer"])) == list(range(100, 108))
    assert sorted(_flat(out["inner"])) == list(range(50, 56))


def test_dataloader_subclass_created_outside_run_names_the_missing_argument() -> None:
    lite = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2)
    with pytest.raises(lite_data.DataLoaderError, match=r"'size'.*inside `LightningLite.run\(\)`"):
        lite.setup_dataloaders(FolderLoader(8))


def test_run_restores_dataloader_classes_when_it_returns_or_raises() -> None:
    before = FolderLoader.__init__
    created: dict[str, Any] = {}

    def body(self: Lite, fail: bool) -> None:
        assert FolderLoader.__init__ is not before  # recording while the body runs
        created["loader"] = FolderLoader(3)
        if fail:
            raise KeyError("boom")

    lite = Lite(accelerator="cpu")
    lite.run(body, False)
    assert lite_data.recorded_arguments(created["loader"]) == ((3,), {})
    with pytest.raises(KeyError, match="boom"):
        lite.run(body, True)
    assert FolderLoader.__init__ is before
    assert "__init_subclass__" not in DataLoader.__dict__
    assert lite_data.recorded_arguments(FolderLoader(3)) is None  # nothing is recorded outside run()


# -- 7. optimizers over parameters that are not the model's ---------------------------------------------


def test_optimizer_over_another_models_parameters_is_an_error_at_setup() -> None:
    lite = Lite(accelerator="cpu")
    model, other = nn.Linear(4, 2), nn.Linear(3, 5)
    optimizer = torch.optim.SGD([{"params": model.parameters()}, {"params": [other.weight]}], lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"optimizer 0 \(SGD\) holds 1 parameter.*param_groups\[1\]\['params'\]\[0\] \(shape \(5, 3\)",
    ):
        lite.setup(model, optimizer)


def test_optimizer_over_part_of_the_model_stays_valid() -> None:
    lite = Lite(accelerator="cpu")
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    frozen = model[0].weight.detach().clone()
    model, optimizer = lite.setup(model, torch.optim.SGD(model[1].parameters(), lr=0.1))
    before = model.module[1].weight.detach().clone()
    lite.backward(model(torch.ones(2, 4)).sum())
    optimizer.step()
    assert not torch.equal(model.module[1].weight, before)
    assert torch.equal(model.module[0].weight, frozen)


# -- 8. errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "accepted"),
    [({"accelerator": "quantum"}, "'cpu', 'cuda', 'gpu'"), ({"strategy": "teleport"}, "ddp, ddp_fork")],
)
def test_unknown_accelerator_or_strategy_is_a_value_error_naming_the_accepted_values(
    flags: dict[str, str], accepted: str
) -> None:
    with pytest.raises(ValueError, match=accepted):
        Lite(**flags)


class _Unsized(Sampler[int]):
    def __iter__(self) -> Iterator[int]:
        return iter(range(4))


def test_unsized_sampler_that_must_be_split_is_a_type_error() -> None:
    lite = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2)
    loader = DataLoader(list(range(4)), sampler=_Unsized())
    with pytest.raises(TypeError, match="has no __len__"):
        lite.setup_dataloaders(loader)
    assert lite.setup_dataloaders(loader, replace_sampler=False).sampler is loader.sampler


# -- the script relaunch (strategy="ddp"): seed, subclass, optimizer, in both processes --------------------


_RELAUNCHED = """
import json, os, sys
import torch
from torch import nn
from torch.utils.data import DataLoader
from lite_facade import LightningLite


class Folder(DataLoader):  # `size` is used, not stored
    def __init__(self, size, batch_size, sampler=None):
        super().__init__(list(range(size)), batch_size=batch_size, shuffle=sampler is None, sampler=sampler)


class Lite(LightningLite):
    def run(self, seed):
        self.seed_everything(seed)
        loader = self.setup_dataloaders(Folder(10, 1))
        model = nn.Linear(2, 1)
        model, optimizer = self.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        result = {
            "rank": self.global_rank,
            "seed": seed,
            "order": [int(b) for b in loader],
            "sampler": type(loader.sampler).__name__,
            "sgd": isinstance(optimizer, torch.optim.SGD),
            "device": str(model.device),
            "dtype": str(model.dtype),
        }
        self.barrier()
        os.write(1, ("RESULT " + json.dumps(result) + "\\n").encode())  # one write: the ranks share stdout


if __name__ == "__main__":
    lite = Lite(accelerator="cpu", strategy="ddp", devices=2)
    for seed in (3, 4):
        lite.run(seed)
"""


def test_script_relaunch_seeds_the_sampler_and_records_subclass_arguments(tmp_path: Path) -> None:
    script = tmp_path / "relaunched.py"
    script.write_text(textwrap.dedent(_RELAUNCHED))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = _results(proc.stdout)
    assert [(r["seed"], r["rank"]) for r in results] == [(3, 0), (3, 1), (4, 0), (4, 1)]
    for r in results:
        assert r["order"] == _expected_order(10, r["rank"], r["seed"])
        assert r["sampler"] == "DistributedSampler" and r["sgd"]
        assert (r["device"], r["dtype"]) == ("cpu", "torch.float32")
    assert results[0]["order"] != results[2]["order"]  # another seed, another order
