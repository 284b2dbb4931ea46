"""LightningLite's checkpoints: save and load (with every rank's RNG states on request)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lite_facade._lite_parts import LiteParts
from lite_facade._rank_zero import rank_zero_warn
from lite_facade._wrappers import _LiteModule, _LiteOptimizer
from lite_strategies import map_state, state_leaves


class CheckpointMethods(LiteParts):
    """Checkpoints of [`LightningLite`][lite_facade.LightningLite] (a part of it, kept in its own module)."""

    # -- checkpoints ---------------------------------------------------------------------------------

    def save(self, content: Any, filepath: str | Path, *, include_rng: bool = False) -> None:
        """Use instead of ``torch.save``: written once (global rank 0), atomically; call it on every process.

        Set-up models and optimizers inside ``content`` are stored as their full state dicts
        (with sharded strategies the strategy gathers or shards them as it needs). ``filepath``
        is a local path or a URL that fsspec knows (``memory://``, ``s3://``, ...; needs
        ``lite-strategies[fsspec]``). ``include_rng=True`` adds every rank's random number
        generator states (Python, NumPy if installed, torch CPU and CUDA) under the key
        ``"lite_rng_states"`` (a list indexed by global rank) of the dict ``content``, so that a
        resume with [`load`][lite_facade.LightningLite.load] continues the same random streams. It is off by default, so a
        file holds exactly what you passed (e.g. a ``state_dict`` that ``torch.load`` users read).
        """
        _check_save_order(content, filepath)
        self._ensure_environment("save()")
        if include_rng:
            if not isinstance(content, dict):
                raise TypeError(
                    f"save(include_rng=True) adds the RNG states to a dict of state; got {type(content).__name__}. "
                    "Pass a dict such as {'model': model, 'optimizer': optimizer}."
                )
            content = {**content, RNG_KEY: self._gather_rng_states()}
        self._strategy.save_checkpoint(filepath, _strategy_objects(content))

    def _gather_rng_states(self) -> list[Any]:
        from lite_collectives import all_gather_object
        from lite_data import rng_states

        mine = rng_states()
        if self.world_size == 1:
            return [mine]
        return all_gather_object(mine)

    def load(
        self, filepath: str | Path, state: dict[str, Any] | None = None, *, weights_only: bool = True
    ) -> dict[str, Any]:
        """Use instead of ``torch.load``: every process loads, tensors land on this process's device.

        Without ``state``, returns what was saved. With ``state`` (e.g. ``{"model": model,
        "optimizer": optimizer, "epoch": 0}``), loads the saved entries of the same keys into
        the set-up models and optimizers in place, replaces the plain values in ``state``, and
        returns the saved entries ``state`` did not name. Only tensors, containers and plain
        values load by default; pass ``weights_only=False`` for a checkpoint you trust that holds
        other Python objects.
        """
        if state is None:
            return self._strategy.load_checkpoint(filepath, weights_only=weights_only)  # type: ignore[no-any-return,unused-ignore]
        if not isinstance(state, dict):
            raise TypeError(
                f"load(state=...) takes a dict like {{'model': model}}, got {type(state).__name__}."
            )
        targets = {key: _strategy_objects(value) for key, value in state.items()}
        rest = self._strategy.load_checkpoint(filepath, targets, weights_only=weights_only)
        for key, value in targets.items():
            state[key] = _write_back(state[key], value)
        if isinstance(rest, dict) and RNG_KEY in rest and RNG_KEY not in state:
            self._restore_rng_states(rest.pop(RNG_KEY), filepath)
        return rest  # type: ignore[no-any-return,unused-ignore]

    def _restore_rng_states(self, saved: Any, filepath: str | Path) -> None:
        from lite_data import set_rng_states

        if not isinstance(saved, (list, tuple)) or len(saved) != self.world_size:
            count = len(saved) if isinstance(saved, (list, tuple)) else "?"
            rank_zero_warn(
                f"{str(filepath)!r} holds the RNG states of {count} processes and this run has {self.world_size}: "
                "the random streams are not restored (the run goes on with the current ones).",
                UserWarning,
                stacklevel=3,
            )
            return
        set_rng_states(saved[self.global_rank])


RNG_KEY = "lite_rng_states"  # where save(include_rng=True) puts every rank's RNG states


def _check_save_order(content: Any, filepath: Any) -> None:
    """Refuse ``save(path, state)``: Lightning Fabric's order, the reverse of LightningLite's."""
    path_like = (str, os.PathLike)
    if isinstance(content, path_like) and not isinstance(filepath, path_like):
        raise TypeError(
            f"save(content, filepath) takes the state first and the path second; got a path "
            f"{os.fspath(content)!r} first and a {type(filepath).__name__} second. Lightning Fabric's "
            "save(path, state) is the other way round: write self.save(state, path)."
        )
    if not isinstance(filepath, path_like):
        raise TypeError(
            f"save(content, filepath): filepath must be a str or os.PathLike (a local path or an fsspec URL), "
            f"got {type(filepath).__name__}"
        )


def _is_stateful(value: Any) -> bool:
    return not isinstance(value, type) and (
        callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))
    )


def _write_back(original: Any, loaded: Any) -> Any:
    """What an entry of the user's ``state`` becomes after a load: set-up and stateful objects stay (they
    loaded in place), containers keep their identity with their plain values replaced."""
    if _is_stateful(original):
        return original
    if not any(_is_stateful(leaf) for leaf in state_leaves(original)):
        return loaded  # plain data: replaced whole by what was saved
    if isinstance(original, dict) and isinstance(loaded, dict):
        for key in list(original):
            if key in loaded:
                original[key] = _write_back(original[key], loaded[key])
        return original
    if (
        isinstance(original, (list, tuple))
        and not hasattr(original, "_fields")
        and isinstance(loaded, (list, tuple))
        and len(original) == len(loaded)
    ):
        values = [_write_back(o, v) for o, v in zip(original, loaded)]
        if isinstance(original, list):
            original[:] = values
            return original
        return type(original)(values)
    return loaded


def _strategy_objects(content: Any) -> Any:
    """Replace set-up models and optimizers (at any depth of dicts, lists, tuples) by what the strategy built."""

    def unwrap(value: Any, _: Any) -> Any:
        if isinstance(value, _LiteModule):
            return value.forward_module
        if isinstance(value, _LiteOptimizer):
            return value.optimizer
        return value

    return map_state(content, unwrap)
