"""Rebuilding a user's optimizers over the parameters ``fully_shard`` replaced (checked before sharding)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lite_strategies._errors import StrategyError


def _has_stepped(optimizer: Optimizer) -> bool:
    # State from construction (e.g. Adagrad's sums, with step 0) is rebuilt by the constructor;
    # state with a non-zero step, or without a step count (momentum buffers), comes from steps.
    for per_param in optimizer.state.values():
        step = per_param.get("step") if isinstance(per_param, dict) else None
        if step is None:
            if per_param:
                return True
        elif float(step) != 0.0:
            return True
    return False


def optimizer_plan(
    optimizer: Optimizer, index: int, names: dict[int, str]
) -> list[tuple[dict[str, Any], list[str]]]:
    """Each param group's hyperparameters and parameter names; refuses what cannot be rebuilt."""
    label = f"optimizer {index} ({type(optimizer).__name__})"
    if _has_stepped(optimizer):
        raise StrategyError(
            f"{label} has already stepped (it holds optimizer state); FSDP rebuilds optimizers over the sharded "
            "parameters, which would lose that state: set up the model and optimizer before the first step, "
            "and restore a checkpoint with load(path, state) after setup"
        )
    plan = []
    for group in optimizer.param_groups:
        unknown = [tuple(p.shape) for p in group["params"] if id(p) not in names]
        if unknown:
            raise StrategyError(
                f"{label} holds {len(unknown)} parameter(s) that are not in the module being set up "
                f"(shapes {unknown[:3]}); FSDP rebuilds each optimizer over its module's sharded parameters, so "
                "give setup() the module whose parameters the optimizer holds (one model per setup call)"
            )
        hyper = {key: value for key, value in group.items() if key != "params"}
        plan.append((hyper, [names[id(p)] for p in group["params"]]))
    return plan


def constructor_defaults(optimizer: Optimizer, index: int) -> dict[str, Any]:
    """The ``defaults`` to rebuild ``optimizer`` with: those its constructor takes (checked before sharding).

    Every param group carries all of its hyperparameters, so the defaults only matter for groups
    added later (and AdamW's defaults hold a key its constructor lacks).
    """
    cls = type(optimizer)
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, params
    except (TypeError, ValueError):  # pragma: no cover - a constructor without a signature
        return dict(optimizer.defaults)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    names = {p.name for p in parameters}
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in optimizer.defaults
    ]
    if required:
        raise StrategyError(
            f"optimizer {index} ({cls.__name__}) cannot be rebuilt over the sharded parameters: its constructor "
            f"needs {required}, which are not in its `defaults`; FSDP rebuilds optimizers as "
            f"{cls.__name__}(param_groups, **defaults)"
        )
    return {k: v for k, v in optimizer.defaults.items() if takes_any or k in names}


def rebuild_optimizer(
    optimizer: Optimizer,
    plan: list[tuple[dict[str, Any], list[str]]],
    defaults: dict[str, Any],
    sharded: dict[str, nn.Parameter],
) -> Optimizer:
    cls = type(optimizer)
    groups = [{**hyper, "params": [sharded[name] for name in names]} for hyper, names in plan]
    try:
        return cls(groups, **defaults)
    except Exception as exc:
        raise StrategyError(
            f"could not rebuild the {cls.__name__} over the sharded parameters as {cls.__name__}(param_groups, "
            f"**defaults) with defaults {sorted(defaults)}: {exc}"
        ) from exc
