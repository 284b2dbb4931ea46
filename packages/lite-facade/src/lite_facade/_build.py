"""Build the strategy a :class:`~lite_facade._resolve.Plan` describes."""

from __future__ import annotations

from typing import Any

from lite_facade._resolve import Plan
from lite_precision import get_precision
from lite_strategies import Strategy, get_strategy_spec


def build_strategy(plan: Plan) -> Strategy:
    """Create (or complete, for a user's strategy object) the strategy of ``plan``; touches no device."""
    precision = plan.precision_plugin or get_precision(plan.precision, device_type=plan.devices[0].type)
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
    strategy_cls = get_strategy_spec(plan.strategy).load()
    return strategy_cls(**settings)
