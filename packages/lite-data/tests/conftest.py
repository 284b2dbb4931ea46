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
