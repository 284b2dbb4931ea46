"""Every code snippet of the spec (spec/lightning-lite-docs.txt), with the drop-in replacement.

``pytorch_lightning`` becomes ``lite_facade`` in the imports and each ``...`` is filled in with
something small and real. Snippets that ask for GPUs, TPUs or DeepSpeed must fail here, at
construction, with the facade's LiteConfigurationError (a ValueError naming the fix).
Snippets that run on several processes use ``ddp_fork`` with 2 CPU processes (fast: the ranks
are forked from this process), except the collectives snippet, which runs with ``ddp_spawn``
as the task asks (its Lite class is therefore defined at module level, so the spawned
processes can import it).

Not run: the spec's last snippet (``from pytorch_lightning import LightningDataModule,
LightningModule, Trainer``) is pure Lightning, which lite does not re-implement.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lite_facade import LiteConfigurationError
from lite_facade.lite import LightningLite

# -- the spec's `MyModel(...)` and `MyDataset(...)`, filled in ------------------------------------


class MyModel(nn.Module):
    """The spec's model: ``loss = model(batch)`` (it returns the loss of a batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :4], batch[:, 4:]
        return nn.functional.mse_loss(self.layer(x), y)


class MyDataset(Dataset):
    """16 rows of [4 inputs | 1 target] with a linear relation the model can learn."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(16, 4, generator=generator)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.rows = torch.cat([x, y], dim=1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def _full_loss(model: nn.Module) -> float:
    with torch.no_grad():
        return float(model(MyDataset().rows))


# -- "My existing PyTorch code" --------------------------------------------------------------------


def test_existing_pytorch_code() -> None:
    def run(args: argparse.Namespace) -> float:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = MyModel().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        dataloader = DataLoader(MyDataset(), batch_size=4)
        model.train()
        for epoch in range(args.num_epochs):  # noqa: B007 - the spec's loop
            for batch in dataloader:
                batch = batch.to(device)
                optimizer.zero_grad()
                loss = model(batch)
                loss.backward()
                optimizer.step()
        return _full_loss(model.cpu())

    before = _full_loss(MyModel())
    assert run(argparse.Namespace(num_epochs=3)) < before


# -- "Convert to LightningLite": the 5 steps --------------------------------------------------------


class FiveStepLite(LightningLite):
    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        torch.manual_seed(0)
        model = MyModel()
        before = _full_loss(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model, optimizer = self.setup(model, optimizer)  # Scale your model / optimizers
        dataloader = DataLoader(MyDataset(), batch_size=4)
        dataloader = self.setup_dataloaders(dataloader)  # Scale your dataloaders
        model.train()
        batches = 0
        for epoch in range(args.num_epochs):  # noqa: B007 - the spec's loop
            for batch in dataloader:
                optimizer.zero_grad()
                loss = model(batch)
                self.backward(loss)  # instead of loss.backward()
                optimizer.step()
                batches += 1
        return {
            "before": before,
            "after": _full_loss(model.module),
            "batches": batches,
            "world": self.world_size,
        }


@pytest.mark.parametrize(
    "flags", [{}, {"accelerator": "cpu", "strategy": "ddp_fork", "devices": 2}], ids=["default", "ddp_fork-2"]
)
def test_five_step_conversion_trains(flags: dict[str, Any]) -> None:
    result = FiveStepLite(**flags).run(argparse.Namespace(num_epochs=3))
    assert result["after"] < result["before"]
    # 16 samples, batch 4: 4 batches per epoch in one process, 2 per process with two.
    assert result["batches"] == 3 * 4 // result["world"]


class EpochsLite(LightningLite):
    """The flags examples call ``Lite(...).run(10)``: run takes the number of epochs."""

    def run(self, num_epochs: int) -> dict[str, Any]:
        model = MyModel()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model, optimizer = self.setup(model, optimizer)
        dataloader = self.setup_dataloaders(DataLoader(MyDataset(), batch_size=8))
        for _ in range(num_epochs):
            for batch in dataloader:
                optimizer.zero_grad()
                self.backward(model(batch))
                optimizer.step()
        return {"device": str(self.device), "param_dtype": str(next(model.parameters()).dtype)}


@pytest.mark.parametrize(
    "flags",
    [
        # Here is how to train on 8 GPUs with torch.bfloat16 precision:
        {"strategy": "ddp", "devices": 8, "accelerator": "gpu", "precision": "bf16"},
        # Here is how to use DeepSpeed Zero3 with 8 GPUs and precision 16:
        {"strategy": "deepspeed", "devices": 8, "accelerator": "gpu", "precision": 16},
    ],
    ids=["ddp-8gpu-bf16", "deepspeed-8gpu-16"],
)
def test_gpu_flags_examples_fail_clearly(flags: dict[str, Any]) -> None:
    with pytest.raises(LiteConfigurationError, match="gpu"):
        EpochsLite(**flags).run(10)


def test_auto_flags_example_runs() -> None:
    # LightningLite can also figure it out automatically for you!
    result = EpochsLite(devices="auto", accelerator="auto", precision=16).run(10)
    assert result["device"] == "cpu"  # no accelerator here
    assert result["param_dtype"] == "torch.float32"  # mixed precision keeps float32 weights


# -- distributed collectives (the spec runs them on 256 GPUs; here ddp_spawn on 2 CPU processes) ----


class CollectivesLite(LightningLite):
    def run(self) -> dict[str, Any]:
        # Transfer and concatenate tensors across processes
        gathered = self.all_gather(torch.tensor([self.global_rank * 10.0]))
        # Transfer an object from one process to all the others
        obj = self.broadcast({"from": self.global_rank, "payload": [1, 2, 3]}, src=1)
        info = {
            # The total number of processes running across all devices and nodes.
            "world_size": self.world_size,
            # The global index of the current process across all devices and nodes.
            "global_rank": self.global_rank,
            # The index of the current process among the processes running on the local node.
            "local_rank": self.local_rank,
            # The index of the current node.
            "node_rank": self.node_rank,
        }
        # Wether this global rank is rank zero.
        if self.is_global_zero:
            # do something on rank 0
            info["zero"] = True
        # Wait for all processes to enter this call.
        self.barrier()
        everyone = self.all_gather(torch.tensor([info["global_rank"], info["local_rank"], info["node_rank"]]))
        return {**info, "gathered": gathered.tolist(), "broadcast": obj, "everyone": everyone.tolist()}


def test_collectives_snippet_with_ddp_spawn() -> None:
    result = CollectivesLite(strategy="ddp_spawn", devices=2, accelerator="cpu").run()
    # run() returns rank 0's value
    assert result["world_size"] == 2
    assert result["global_rank"] == 0 and result["zero"] is True
    assert result["gathered"] == [[0.0], [10.0]]
    assert result["broadcast"] == {"from": 1, "payload": [1, 2, 3]}
    assert result["everyone"] == [[0, 0, 0], [1, 1, 0]]  # (global, local, node) of each rank


def test_collectives_snippet_on_gpus_fails_clearly() -> None:
    with pytest.raises(LiteConfigurationError, match="gpu"):
        CollectivesLite(strategy="ddp", gpus=8, num_nodes=32, accelerator="gpu")


# -- custom placement: move_to_device=False, self.device, to_device --------------------------------


class PlacementLite(LightningLite):
    """A model and data on the 'meta' device: moving them to the CPU fails, so not moving them shows."""

    def run(self, tmp_path: Path) -> dict[str, Any]:
        model = nn.Linear(4, 2, device="meta")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = self.setup(model, optimizer, move_to_device=False)
        loader = self.setup_dataloaders(
            DataLoader([torch.zeros(4, device="meta")] * 4, batch_size=2), move_to_device=False
        )
        batch_devices = [batch.device.type for batch in loader]
        output = model(next(iter(loader)))

        torch.save({"x": torch.ones(3), "nested": [torch.zeros(2)]}, tmp_path / "dataset.pt")
        data = torch.load(tmp_path / "dataset.pt")
        data = self.to_device(data)
        return {
            "param_device": next(model.parameters()).device.type,
            "batch_devices": batch_devices,
            "output_device": output.device.type,
            "device": self.device,
            "data": data,
        }


def test_move_to_device_false_and_to_device(tmp_path: Path) -> None:
    result = PlacementLite(accelerator="cpu").run(tmp_path)
    assert result["param_device"] == "meta"
    assert result["batch_devices"] == ["meta", "meta"]
    assert result["output_device"] == "meta"
    assert result["device"] == torch.device("cpu")
    assert result["data"]["x"].device == result["device"]
    torch.testing.assert_close(result["data"]["nested"][0], torch.zeros(2))


class DefaultPlacementLite(LightningLite):
    def run(self) -> None:
        self.setup(nn.Linear(4, 2, device="meta"))  # moving a meta module to the CPU cannot work


def test_move_to_device_true_does_move() -> None:
    # The move is attempted, and a meta-device model (which holds no values) is refused with a
    # clear error at setup instead of torch's "Cannot copy out of meta tensor" (issue 16).
    with pytest.raises(ValueError, match="meta device"):
        DefaultPlacementLite(accelerator="cpu").run()


# -- the flags ------------------------------------------------------------------------------------


class Lite(LightningLite):
    """The spec's ``Lite`` in the flags section: only constructed (``lite = Lite(...)``)."""

    def run(self) -> None:
        pass


@pytest.mark.parametrize(
    "flags",
    [
        # accelerator
        {"accelerator": "cpu"},
        {"devices": 2, "accelerator": "auto"},  # no GPU here: 2 CPU processes
        # strategy
        {"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 4},
        # devices
        {"devices": None},
        {"devices": 0},
        # num_nodes
        {"num_nodes": 1},
        {"num_nodes": 8},
        # precision
        {"precision": 32, "devices": 1},
        {"precision": 16, "devices": 1},
        {"precision": "bf16", "devices": 1},
        {"precision": 64, "devices": 1},
    ],
    ids=str,
)
def test_flags_that_construct_here(flags: dict[str, Any]) -> None:
    lite = Lite(**flags)
    assert lite.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "world_size"),
    [
        ({"devices": 2, "accelerator": "auto"}, 2),
        ({"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 4}, 4),
        ({"num_nodes": 8}, 8),
        ({"devices": None}, 1),
        ({"devices": 0}, 1),
    ],
    ids=str,
)
def test_flags_world_size(flags: dict[str, Any], world_size: int) -> None:
    assert Lite(**flags).world_size == world_size


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        # accelerator
        ({"devices": 2, "accelerator": "gpu"}, "gpu"),
        ({"devices": 8, "accelerator": "tpu"}, "tpu"),
        ({"devices": 4, "accelerator": "gpu", "strategy": "ddp"}, "gpu"),
        # strategy
        ({"strategy": "ddp", "accelerator": "gpu", "devices": 4}, "gpu"),
        # devices
        ({"devices": 2, "accelerator": "gpu"}, "gpu"),
        ({"devices": [1, 4], "accelerator": "gpu"}, "gpu"),
        ({"devices": "1, 4", "accelerator": "gpu"}, "gpu"),
        ({"devices": -1, "accelerator": "gpu"}, "gpu"),
        ({"devices": "-1", "accelerator": "gpu"}, "gpu"),
        # gpus / tpu_cores shorthands
        ({"gpus": 2}, "gpu"),
        ({"tpu_cores": 8}, "tpu"),
        # run: lite = Lite(accelerator="gpu", devices=2)
        ({"accelerator": "gpu", "devices": 2}, "gpu"),
    ],
    ids=str,
)
def test_flags_that_need_gpus_or_tpus_fail_clearly(flags: dict[str, Any], match: str) -> None:
    with pytest.raises(LiteConfigurationError, match=match) as info:
        Lite(**flags)
    assert "not available here" in str(info.value)


def test_gpus_shorthand_equals_devices_and_accelerator() -> None:
    with pytest.raises(LiteConfigurationError) as shorthand:
        Lite(gpus=2)
    with pytest.raises(LiteConfigurationError) as longhand:
        Lite(devices=2, accelerator="gpu")
    assert "cuda" in str(shorthand.value) and "cuda" in str(longhand.value)


def test_deepspeed_plugin_import_works_and_using_it_names_the_pip_extra() -> None:
    from lite_facade.plugins import DeepSpeedPlugin  # the import itself must work without deepspeed

    with pytest.raises(
        ValueError,
        match=r"pip install 'deepspeed>=0\.14' \(what the extra lite-strategies\[deepspeed\] installs\)",
    ):
        DeepSpeedPlugin(stage=2)


# -- plugins: a custom ClusterEnvironment -----------------------------------------------------------

from lite_facade.plugins.environments import ClusterEnvironment  # noqa: E402 - the spec's import


def _my_cluster(port: int) -> ClusterEnvironment:
    your_main_address, your_main_port, the_world_size = "127.0.0.1", port, 2

    class MyCluster(ClusterEnvironment):
        @property
        def main_address(self):  # type: ignore[no-untyped-def]
            return your_main_address

        @property
        def main_port(self):  # type: ignore[no-untyped-def]
            return your_main_port

        def world_size(self):  # type: ignore[no-untyped-def]
            return the_world_size

    return MyCluster()


class ClusterLite(LightningLite):
    def run(self) -> dict[str, Any]:
        ranks = self.all_gather(torch.tensor(self.global_rank))
        return {"ranks": ranks.tolist(), "world_size": self.world_size}


def test_custom_cluster_environment_plugin(free_port: int) -> None:
    lite = ClusterLite(plugins=[_my_cluster(free_port)], accelerator="cpu", strategy="ddp_fork", devices=2)
    assert lite.run() == {"ranks": [0, 1], "world_size": 2}


# -- methods ---------------------------------------------------------------------------------------


class RunArgsLite(LightningLite):
    # Input arguments are optional, put whatever you need
    def run(self, learning_rate: float, num_layers: int) -> tuple[float, int]:
        """Here goes your training loop"""
        return learning_rate, num_layers


def test_run_passes_its_arguments() -> None:
    # The spec's `Lite(accelerator="gpu", devices=2)` fails here (see above); the CPU runs it.
    lite = RunArgsLite(accelerator="cpu")
    assert lite.run(learning_rate=0.01, num_layers=12) == (0.01, 12)


class SetupLite(LightningLite):
    def run(self, move_to_device: bool) -> dict[str, Any]:
        model = nn.Linear(32, 64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
        # Setup model and optimizer for accelerated training
        model, optimizer = self.setup(model, optimizer, move_to_device=move_to_device)
        inputs = torch.randn(8, 32)
        output = model(inputs)
        loss = output.square().mean()
        # loss.backward()
        self.backward(loss)
        optimizer.step()
        return {
            "output_dtype": output.dtype,
            "module": type(model.module),
            "optimizer": type(optimizer.optimizer),
        }


@pytest.mark.parametrize("move_to_device", [True, False])
def test_setup_snippet(move_to_device: bool) -> None:
    result = SetupLite(accelerator="cpu", precision="bf16").run(move_to_device)
    # "prepares the model for the selected precision so that operations during forward() get cast"
    assert result["output_dtype"] == torch.float32  # computed in bfloat16, returned as float32
    assert result["module"] is nn.Linear and result["optimizer"] is torch.optim.SGD


class DataloadersLite(LightningLite):
    def run(self, replace_sampler: bool) -> list[int]:
        train_data = DataLoader(MyDataset(), batch_size=4)
        test_data = DataLoader(MyDataset(), batch_size=4)
        train_data, test_data = self.setup_dataloaders(train_data, test_data, replace_sampler=replace_sampler)
        return [sum(len(batch) for batch in train_data), sum(len(batch) for batch in test_data)]


@pytest.mark.parametrize(("replace_sampler", "expected"), [(True, [8, 8]), (False, [16, 16])])
def test_setup_dataloaders_snippet(replace_sampler: bool, expected: list[int]) -> None:
    # With 2 processes each sees half the data, unless the sampler is left alone.
    assert DataloadersLite(accelerator="cpu", strategy="ddp_fork", devices=2).run(replace_sampler) == expected


class SeedLite(LightningLite):
    def run(self) -> list[Any]:
        import numpy as np

        draws = []
        for _ in range(2):
            # Instead of `torch.manual_seed(...)`, call:
            seed = self.seed_everything(1234)
            draws.append((seed, torch.rand(2).tolist(), np.random.rand(), random.random()))
        return draws


def test_seed_everything_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numpy")  # the snippet draws from numpy too (nox runs it once numpy is installed)
    for name in (
        "PL_GLOBAL_SEED",
        "PL_SEED_WORKERS",
    ):  # seed_everything hands the seed on to subprocesses this way
        monkeypatch.setenv(name, "")  # so that monkeypatch restores the variable's absence afterwards
        monkeypatch.delenv(name)
    first, second = SeedLite(accelerator="cpu").run()
    assert first == second and first[0] == 1234
    torch.manual_seed(1234)
    assert first[1] == torch.rand(2).tolist()


class AutocastLite(LightningLite):
    def run(self) -> dict[str, torch.dtype]:
        model = nn.Linear(4, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = self.setup(model, optimizer)
        inputs, target = torch.randn(2, 4), torch.randn(2, 4)
        # Lite handles precision automatically for the model
        output = model(inputs)
        weight = torch.randn(4, 4)
        with self.autocast():  # optional
            loss = nn.functional.mse_loss(output @ weight, target)
            inside = (output @ weight).dtype
        self.backward(loss)
        return {"inside": inside, "outside": (output @ weight).dtype}


def test_autocast_snippet() -> None:
    assert AutocastLite(accelerator="cpu", precision="bf16").run() == {
        "inside": torch.bfloat16,
        "outside": torch.float32,
    }


class PrintLite(LightningLite):
    def run(self) -> None:
        epoch, num_epochs, loss = 1, 10, 0.5
        # Print only on the main process
        self.print(f"{epoch}/{num_epochs}| Train Epoch Loss: {loss}")


def test_print_snippet_prints_once(capfd: pytest.CaptureFixture[str]) -> None:
    PrintLite(accelerator="cpu", strategy="ddp_fork", devices=2).run()
    assert capfd.readouterr().out.count("1/10| Train Epoch Loss: 0.5") == 1


class SaveLoadLite(LightningLite):
    def run(self) -> dict[str, Any]:
        model = nn.Linear(3, 2)
        model, optimizer = self.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))  # noqa: RUF059
        # Instead of `torch.save(...)`, call:
        self.save(model.state_dict(), "path/to/checkpoint.ckpt")
        # Instead of `torch.load(...)`, call:
        loaded = self.load("path/to/checkpoint.ckpt")
        return {"saved": model.state_dict(), "loaded": loaded}


@pytest.mark.parametrize("flags", [{}, {"strategy": "ddp_fork", "devices": 2}], ids=["single", "ddp_fork-2"])
def test_save_load_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: dict[str, Any]) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet's relative path lands in tmp_path
    result = SaveLoadLite(accelerator="cpu", **flags).run()
    assert result["loaded"].keys() == result["saved"].keys() == {"weight", "bias"}
    for key, value in result["saved"].items():
        torch.testing.assert_close(result["loaded"][key], value)
    assert (tmp_path / "path" / "to" / "checkpoint.ckpt").is_file()


class BarrierLite(LightningLite):
    def run(self, data_file: str) -> list[int]:
        url = "http://example.invalid/data"

        def download_data(url: str) -> None:
            time.sleep(0.5)  # a slow download: rank 1 reaches the barrier well before the file exists
            Path(data_file).write_text(url)

        # Download data only on one process
        if self.global_rank == 0:
            download_data(url)
        # Wait until all processes meet up here
        self.barrier()
        # All processes are allowed to read the data now
        found = os.path.exists(data_file) and Path(data_file).read_text() == url
        return self.all_gather(torch.tensor(int(found))).tolist()


def test_barrier_snippet(tmp_path: Path) -> None:
    data_file = str(tmp_path / "data.txt")
    assert BarrierLite(accelerator="cpu", strategy="ddp_fork", devices=2).run(data_file) == [1, 1]


# -- "Convert to Lightning": the Lite with fit() ----------------------------------------------------

num_epochs = 2  # the snippet reads a global `num_epochs`


class FitLite(LightningLite):
    # 1. This would becomes the LightningModule `__init__` function.
    def run(self, args: argparse.Namespace) -> float:
        self.args = args
        self.model = MyModel()
        self.fit()  # This would be automated by Lightning Trainer.
        return _full_loss(self.model.module)

    # 2. This can be fully removed as Lightning handles the FitLoop
    # and setting up the model, optimizer, dataloader and many more.
    def fit(self) -> None:
        # setting everything
        optimizer = self.configure_optimizers()
        self.model, optimizer = self.setup(self.model, optimizer)
        dataloader = self.setup_dataloaders(self.train_dataloader())

        # start fitting
        self.model.train()
        for epoch in range(num_epochs):  # noqa: B007 - the spec's loop
            # The spec writes `for batch in enumerate(dataloader)` and then uses `batch_idx`: unpacked here.
            for batch_idx, batch in enumerate(dataloader):
                optimizer.zero_grad()
                loss = self.training_step(batch, batch_idx)
                self.backward(loss)
                optimizer.step()

    # 3. This stays here as it belongs to the LightningModule.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.forward(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.05)

    # 4. [Optionally] This can stay here or be extracted within a LightningDataModule to enable higher composability.
    def train_dataloader(self) -> DataLoader:
        return DataLoader(MyDataset(), batch_size=4)


def test_convert_to_lightning_fit_snippet() -> None:
    torch.manual_seed(0)
    before = _full_loss(MyModel())
    torch.manual_seed(0)
    assert FitLite(accelerator="cpu").run(argparse.Namespace()) < before
