"""What a checkpoint holds and how it comes back: schedulers, loaders, any stateful object, RNG, compile, URLs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lite_facade import LightningLite


class _Lite(LightningLite):
    def run(self) -> None:  # the tests call the methods directly (one process: no run() needed)
        pass


class _Counter:
    """A user class with the state_dict protocol (not a torch object)."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


def _setup(lite: LightningLite) -> tuple[Any, Any, Any, Any]:
    torch.manual_seed(0)
    model, optimizer = lite.setup(*_plain())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loader = lite.setup_dataloaders(DataLoader(list(range(10)), batch_size=2, shuffle=True))
    return model, optimizer, scheduler, loader


def _plain() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.3), nn.Linear(4, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def _train(model: Any, optimizer: Any, scheduler: Any, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
        scheduler.step()


def test_scheduler_loader_scaler_and_user_objects_round_trip_under_weights_only(tmp_path: Path) -> None:
    lite = _Lite(accelerator="cpu")
    model, optimizer, scheduler, loader = _setup(lite)
    counter = _Counter()
    counter.count = 7
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(model, optimizer, scheduler, 3)
    it = iter(loader)
    next(it)
    path = tmp_path / "ckpt.pt"
    lite.save(
        {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "loader": loader,
            "extras": {"counter": counter, "scaler": scaler},
            "epoch": 2,
            "tail": [counter],
        },
        path,
    )
    raw = torch.load(path, weights_only=True)  # state dicts only: no pickled objects
    assert raw["scheduler"]["last_epoch"] == 3 and raw["extras"]["counter"] == {"count": 7}

    model2, optimizer2, scheduler2, loader2 = _setup(_Lite(accelerator="cpu"))
    counter2, scaler2 = _Counter(), torch.amp.GradScaler("cpu", init_scale=2.0)
    extras = {"counter": counter2, "scaler": scaler2}
    tail = [counter2]
    state = {
        "model": model2,
        "optimizer": optimizer2,
        "scheduler": scheduler2,
        "loader": loader2,
        "extras": extras,
        "epoch": 0,
        "tail": tail,
    }
    rest = lite.load(path, state)
    assert rest == {}
    assert state["extras"] is extras and state["tail"] is tail and state["model"] is model2  # loaded in place
    assert counter2.count == 7 and scaler2.get_scale() == 1024.0 and state["epoch"] == 2
    assert scheduler2.last_epoch == 3 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for a, b in zip(model2.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert [b.tolist() for b in loader2] == [b.tolist() for b in it]  # the very next batch on


def test_include_rng_restores_every_random_stream(tmp_path: Path) -> None:
    lite = _Lite(accelerator="cpu")
    model, _optimizer, _scheduler, _ = _setup(lite)
    path = tmp_path / "ckpt.pt"
    lite.save({"model": model, "step": 1}, path, include_rng=True)
    expected = (random.random(), torch.rand(3).tolist(), model(torch.ones(2, 3)).tolist())  # dropout too
    state = {"model": model, "step": 0}
    rest = lite.load(path, state)
    assert rest == {} and state["step"] == 1  # the RNG key is consumed, not returned
    assert (random.random(), torch.rand(3).tolist(), model(torch.ones(2, 3)).tolist()) == expected
    assert "lite_rng_states" in lite.load(path)  # a plain load shows everything
    with pytest.raises(TypeError, match="dict"):
        lite.save(model.state_dict().items(), path, include_rng=True)


def test_without_include_rng_the_file_holds_exactly_what_was_passed(tmp_path: Path) -> None:
    lite = _Lite(accelerator="cpu")
    model, *_ = _setup(lite)
    lite.save(model.state_dict(), tmp_path / "sd.pt")
    plain, _ = _plain()
    plain.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))  # as a torch user reads it


def test_fabric_argument_order_is_a_type_error_naming_lites_order(tmp_path: Path) -> None:
    lite = _Lite(accelerator="cpu")
    model, *_ = _setup(lite)
    with pytest.raises(TypeError, match=r"self\.save\(state, path\)"):
        lite.save(tmp_path / "ckpt.pt", {"model": model})
    with pytest.raises(TypeError, match=r"filepath must be a str or os\.PathLike"):
        lite.save({"model": model}, 3)
    assert list(tmp_path.iterdir()) == []


def test_compiled_model_keeps_the_original_keys_both_ways(tmp_path: Path) -> None:
    lite = _Lite(accelerator="cpu")
    torch.manual_seed(0)
    plain, _ = _plain()
    compiled = torch.compile(plain, backend="eager")
    model, optimizer = lite.setup(compiled, torch.optim.SGD(compiled.parameters(), lr=0.1))
    assert list(model.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefix
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    lite.save({"model": model}, tmp_path / "compiled.pt")
    fresh, _ = _plain()
    fresh.load_state_dict(lite.load(tmp_path / "compiled.pt")["model"])  # into an uncompiled module
    # the reverse: a checkpoint of an uncompiled module into the compiled one, and torch's prefixed keys
    other, _ = _plain()
    torch.save({"model": other.state_dict()}, tmp_path / "plain.pt")
    lite.load(tmp_path / "plain.pt", {"model": model})
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    model.load_state_dict(torch.compile(fresh, backend="eager").state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_memory_url_round_trip_and_no_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)
    lite = _Lite(accelerator="cpu")
    model, optimizer, scheduler, _ = _setup(lite)
    _train(model, optimizer, scheduler, 1)
    lite.save({"model": model, "scheduler": scheduler}, "memory://facade-tests/ckpt.pt")
    model2, _optimizer2, scheduler2, _ = _setup(_Lite(accelerator="cpu"))
    lite.load("memory://facade-tests/ckpt.pt", {"model": model2, "scheduler": scheduler2})
    assert scheduler2.last_epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert list(tmp_path.iterdir()) == []
