"""Build the strategy a [`Plan`][lite_facade.Plan] describes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lite_facade._resolve import LiteConfigurationError, Plan
from lite_strategies import Strategy, StrategyError, get_strategy_spec


def check_timeout(timeout: object) -> None:
    """Raise LiteConfigurationError unless ``timeout`` is None, a positive number of seconds or timedelta.

    Checked for every strategy, the ones in a single process too (they ignore it): a bad value is
    a mistake wherever the script runs next.
    """
    if timeout is None:
        return
    seconds: float | None = None
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    if seconds is None or not (0 < seconds < timedelta.max.total_seconds()):
        raise LiteConfigurationError(
            f"LightningLite(timeout={timeout!r}) cannot run here:\n  - timeout={timeout!r}: must be a "
            "positive number of seconds or a datetime.timedelta, e.g. timeout=3600; None (the default) "
            "keeps the strategy's own, 30 minutes"
        )


def build_strategy(plan: Plan, *, timeout: float | timedelta | None = None) -> Strategy:
    """Create (or complete, for a user's strategy object) the strategy of ``plan``; touches no device.

    ``timeout`` (the facade's) goes to a strategy that waits on other processes; one that runs in a
    single process has nothing to wait for and does not take it.
    """
    spec = plan.strategy_object.spec if plan.strategy_object is not None else get_strategy_spec(plan.strategy)
    precision = plan.precision_plugin or spec.make_precision(plan.precision, plan.devices[0].type)
    settings: dict[str, Any] = dict(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        precision=precision,
        cluster_environment=plan.environment,
        checkpoint_io=plan.checkpoint_io,
    )
    if plan.strategy_object is not None:
        if timeout is not None:
            raise StrategyError(
                f"timeout={timeout!r} was given to LightningLite together with a strategy object; pass it to "
                f"the strategy instead, e.g. {type(plan.strategy_object).__name__}(timeout={timeout!r})"
            )
        return plan.strategy_object.configured(**settings)
    if timeout is not None and "timeout" in spec.load(check_backend=False).accepted_kwargs:
        settings["timeout"] = timeout
    return spec.build(**settings)
