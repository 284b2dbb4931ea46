"""Fixtures of lite_data's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Start without PL_GLOBAL_SEED / PL_SEED_WORKERS and restore them after the test.

    Setting before deleting makes monkeypatch remember the original value (or its absence),
    so whatever ``seed_everything`` writes is undone.
    """
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    yield monkeypatch


# TEMPORARY stand-in until lite_devices.move_to_device lands; remove then.
import lite_devices  # noqa: E402

if not hasattr(lite_devices, "move_to_device"):
    from torch.utils._pytree import tree_map

    def _move(obj, device, *, non_blocking=False):  # type: ignore[no-untyped-def]
        import torch

        return tree_map(
            lambda x: x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x, obj
        )

    lite_devices.move_to_device = _move  # type: ignore[attr-defined]
