"""LightningLite(timeout=...) reaches the strategy's process group; strategy="auto" is the default choice."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lite_facade import LightningLite, LiteConfigurationError
from lite_strategies import DDPStrategy


class Lite(LightningLite):
    def run(self) -> None:
        pass


def test_timeout_goes_to_a_strategy_that_waits_on_other_processes() -> None:
    lite = Lite(strategy="ddp_spawn", accelerator="cpu", devices=2, timeout=12)
    assert lite._strategy._timeout == timedelta(seconds=12)
    assert Lite(
        strategy="ddp", accelerator="cpu", devices=2, timeout=timedelta(minutes=2)
    )._strategy._timeout == (timedelta(minutes=2))
    Lite(accelerator="cpu", timeout=5)  # one process: nothing to wait for, accepted


@pytest.mark.parametrize("timeout", [-3, 0, "soon", float("nan"), float("inf"), True, timedelta(0)])
@pytest.mark.parametrize("devices", [1, 2])
def test_a_bad_timeout_fails_at_construction(timeout: object, devices: int) -> None:
    # In one process too, where the timeout is not used: the same script may run on two next.
    with pytest.raises(LiteConfigurationError) as caught:
        Lite(accelerator="cpu", devices=devices, timeout=timeout)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"LightningLite(timeout={timeout!r}) cannot run here")
    assert "positive number of seconds or a datetime.timedelta" in message and "timeout=3600" in message


def test_timeout_with_a_strategy_object_says_where_it_goes() -> None:
    with pytest.raises(LiteConfigurationError, match=r"DDPStrategy\(timeout=3\)"):
        Lite(strategy=DDPStrategy(), accelerator="cpu", devices=2, timeout=3)


@pytest.mark.parametrize("devices", [1, 2])
def test_strategy_auto_is_the_default_choice(devices: int) -> None:
    auto = Lite(strategy="auto", accelerator="cpu", devices=devices)
    default = Lite(accelerator="cpu", devices=devices)
    assert auto.plan.strategy == default.plan.strategy
