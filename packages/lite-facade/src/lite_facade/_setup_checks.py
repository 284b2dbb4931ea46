"""What setup() and init_module() check and do to models: meta-device models, skipped initialisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode

from lite_facade._wrappers import _LiteModule, _LiteOptimizer


class SkipInitialisation(TorchFunctionMode):
    """Inside it the ``torch.nn.init`` functions leave their tensor as it is (``init_module(empty_init=True)``)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def check_materialisable(model: nn.Module, strategy_name: str, what: str) -> None:
    """Refuse a model on the meta device under a strategy that cannot materialise it (all but fsdp)."""
    if strategy_name.startswith("fsdp"):
        return
    meta = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if meta:
        shown = _first_few(meta, 3)
        raise ValueError(
            f"{what}: the model has {len(meta)} parameter(s)/buffer(s) on the meta device ({shown}), which hold no "
            f"values, and strategy={strategy_name!r} cannot materialise them. Create the model inside "
            "`with self.init_module():` (on this process's device), or materialise it before setup "
            "(`model.to_empty(device=self.device)`, then initialise or load the weights); strategy='fsdp' "
            "materialises a meta-device model at setup with each submodule's reset_parameters()."
        )


def check_setup_arguments(model: nn.Module, optimizers: Sequence[Optimizer]) -> None:
    """Refuse what setup() cannot work with: wrappers set up twice, non-modules, foreign parameters."""
    if isinstance(model, _LiteModule):
        raise ValueError(
            "A model should be passed only once to the `setup()` method: this one is already set up. Pass the "
            "original model (the wrapper's `.module`) or use the set-up one as it is."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"setup() takes a torch.nn.Module first, got {type(model).__name__}.")
    check_optimizers(optimizers, "setup()")
    # An optimizer over parameters that are not the model's would train something else: the
    # model would silently not change. A subset (fine-tuning a head) is fine.
    model_params = {id(p) for p in model.parameters()}
    for index, opt in enumerate(optimizers):
        foreign = [
            f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)}, {p.dtype})"
            for g, group in enumerate(opt.param_groups)
            for i, p in enumerate(group["params"])
            if id(p) not in model_params
        ]
        if foreign:
            shown = _first_few(foreign, 5)
            raise ValueError(
                f"setup(): optimizer {index} ({type(opt).__name__}) holds {len(foreign)} parameter(s) that are not "
                f"parameters of the model passed with it: {shown}. Create the optimizer from this model's "
                "parameters (e.g. `torch.optim.SGD(model.parameters(), ...)`), or set up each model "
                "with its own optimizers."
            )


def check_optimizers(optimizers: Sequence[Optimizer], where: str) -> None:
    """Refuse an optimizer that is already set up, or anything that is not an optimizer."""
    for opt in optimizers:
        if isinstance(opt, _LiteOptimizer):
            raise ValueError(
                f"An optimizer should be passed only once to the `{where}` method: this one is already set up. "
                "Pass the original optimizer (the wrapper's `.optimizer`)."
            )
        if not isinstance(opt, Optimizer):
            raise TypeError(f"{where} takes torch.optim.Optimizer objects, got {type(opt).__name__}.")


def _first_few(items: Sequence[str], limit: int) -> str:
    """``items`` joined with commas, the ones past ``limit`` counted ("a, b and 3 more")."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
