"""The resolver's compatibility rewrites are shown once, by global rank 0 only."""

from __future__ import annotations

import warnings

import pytest

from lite_facade import LightningLite


class Lite(LightningLite):
    def run(self) -> None:
        pass


def _warnings_of(**flags: object) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Lite(**flags)
    return [str(w.message) for w in caught if "as LightningLite did" in str(w.message)]


def test_a_rewrite_is_shown_once_on_rank_zero() -> None:
    (message,) = _warnings_of(strategy="dp", accelerator="cpu", devices=2)
    assert "strategy='dp'" in message and "strategy='ddp'" in message


def test_other_ranks_do_not_repeat_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _warnings_of(strategy="dp", accelerator="cpu", devices=2) == []
