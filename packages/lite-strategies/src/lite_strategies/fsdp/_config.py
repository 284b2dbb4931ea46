"""The FSDP strategy's options: importing FSDP2 and normalizing ``auto_wrap_policy``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lite_strategies._errors import StrategyError


def import_fsdp() -> Any:
    """``torch.distributed.fsdp`` with FSDP2's ``fully_shard``, or a StrategyError saying what is missing."""
    import torch.distributed

    if not torch.distributed.is_available():
        raise StrategyError(
            f"strategy 'fsdp' needs torch.distributed, which this torch build ({torch.__version__}) lacks"
        )
    try:
        import torch.distributed.fsdp as fsdp
    except ImportError as exc:  # pragma: no cover - every torch with torch.distributed has it
        raise StrategyError(f"strategy 'fsdp' could not import torch.distributed.fsdp: {exc}") from exc
    if not hasattr(fsdp, "fully_shard"):
        raise StrategyError(
            f"strategy 'fsdp' runs on FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); this torch is "
            f"{torch.__version__}: upgrade torch or use strategy='ddp'"
        )
    return fsdp


def wrap_predicate(policy: Any) -> Callable[[nn.Module], bool] | None:
    """Normalize ``auto_wrap_policy``: None, module classes (one or a collection), or ``callable(module) -> bool``."""
    if policy is None:
        return None
    if isinstance(policy, type):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        wrong = [c for c in classes if not (isinstance(c, type) and issubclass(c, nn.Module))]
        if not classes or wrong:
            raise StrategyError(
                f"auto_wrap_policy as a collection must hold torch.nn.Module subclasses (e.g. {{nn.Linear}}), "
                f"got {policy!r}"
            )
        return _ClassPolicy(classes)
    if callable(policy):
        return policy
    raise StrategyError(
        f"auto_wrap_policy must be None, a set of module classes (each instance is sharded on its own, "
        f"e.g. {{nn.TransformerEncoderLayer}}) or a callable(module) -> bool, got {policy!r}"
    )


class _ClassPolicy:
    """``auto_wrap_policy`` given as module classes: a picklable ``isinstance`` test."""

    def __init__(self, classes: tuple[type[nn.Module], ...]) -> None:
        self.classes = classes

    def __call__(self, module: nn.Module) -> bool:
        return isinstance(module, self.classes)
