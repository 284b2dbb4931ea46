"""Build the strategy a :class:`~lite_facade._resolve.Plan` describes."""

from __future__ import annotations

from typing import Any

from lite_facade._resolve import Plan
from lite_strategies import Strategy, get_strategy_spec


def build_strategy(plan: Plan) -> Strategy:
    """Create (or complete, for a user's strategy object) the strategy of ``plan``; touches no device."""
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
        return plan.strategy_object.configured(**settings)
    return spec.build(**settings)
