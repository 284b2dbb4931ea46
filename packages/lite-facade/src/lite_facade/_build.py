"""Build the strategy a [`Plan`][lite_facade.Plan] describes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lite_facade._resolve import Plan
from lite_strategies import Strategy, StrategyError, get_strategy_spec


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
