"""DeepSpeed checkpoints: a directory with one sub-directory per engine (``engine.save_checkpoint``),
the plain values as client state, and a manifest; and the tool that consolidates them into one file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lite_strategies._checkpoint_io import is_url
from lite_strategies._errors import CheckpointError
from lite_strategies._state import check_checkpoint, state_leaves

if TYPE_CHECKING:
    from lite_strategies.deepspeed._strategy import DeepSpeedStrategy

_PathLike = str | os.PathLike[str]

#: Written next to the engines' directories: which keys are engines, which optimizers go with them.
MANIFEST = "lite_deepspeed.json"
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")


def holds_engines(strategy: DeepSpeedStrategy, state: Any) -> bool:
    """Whether ``state`` is a dict with one of ``strategy``'s engines somewhere in it."""
    return isinstance(state, dict) and any(strategy.is_engine(v) for v in state_leaves(state))


def save_engines(strategy: DeepSpeedStrategy, path: _PathLike, state: dict[str, Any]) -> None:
    """See [`DeepSpeedStrategy.save_checkpoint`][lite_strategies.DeepSpeedStrategy.save_checkpoint]."""
    engines, optimizers, plain = split_state(strategy, state, "save")
    if is_url(path):
        raise CheckpointError(
            f"{os.fspath(path)!r} is a URL, but a DeepSpeed checkpoint (a directory written by every process "
            "with DeepSpeed's own writer) goes to a local or shared filesystem path only; save there, then "
            "consolidate_deepspeed_checkpoint() it into one file if you need to upload it"
        )
    directory = Path(path)
    if directory.is_file():
        raise CheckpointError(
            f"{os.fspath(path)!r} is a file, but a DeepSpeed checkpoint is a directory; choose another path"
        )
    client_state = {"lite": strategy._convert_state(plain)}
    for key, engine in engines.items():
        engine.save_checkpoint(os.fspath(directory), tag=key, client_state=client_state)
    if strategy.is_global_zero:
        manifest = {"engines": sorted(engines), "optimizers": optimizers, "zero_stage": strategy.zero_stage}
        tmp = directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, directory / MANIFEST)
    strategy.barrier("save_checkpoint")


def load_engines(strategy: DeepSpeedStrategy, path: _PathLike, state: dict[str, Any]) -> dict[str, Any]:
    """Load a DeepSpeed checkpoint directory into ``state``; see [`DeepSpeedStrategy.load_checkpoint`][lite_strategies.DeepSpeedStrategy.load_checkpoint]."""
    manifest_path = Path(path) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    engines, optimizers, plain = split_state(strategy, state, "load")
    saved = _saved_plain_values(Path(path), manifest)
    check_checkpoint(path, dict.fromkeys([*manifest["engines"], *manifest["optimizers"], *saved]), state)
    for key, engine in engines.items():
        load_path, _ = engine.load_checkpoint(
            os.fspath(path),
            tag=key,
            load_optimizer_states=key in optimizers.values(),
            load_lr_scheduler_states=False,
        )
        if load_path is None:
            raise CheckpointError(f"{os.fspath(path)!r}: DeepSpeed found no checkpoint under tag {key!r}")
    rest = strategy._restore_state(path, saved, plain)
    state.update(plain)
    return rest


def load_full_file(
    strategy: DeepSpeedStrategy, path: _PathLike, state: dict[str, Any], *, weights_only: bool
) -> dict[str, Any]:
    """Load a single full file (e.g. saved by DDP) into a state holding engines: module weights only."""
    engines, optimizers, _ = split_state(strategy, state, "load")
    if optimizers:
        raise CheckpointError(
            f"{os.fspath(path)!r} is a full (single-file) checkpoint: its optimizer state cannot be split into "
            f"DeepSpeed's ZeRO partitions; leave the optimizers {sorted(optimizers)} out of the state to load "
            "the weights only"
        )
    checkpoint = strategy.checkpoint_io.load_checkpoint(path, map_location="cpu", weights_only=weights_only)
    check_checkpoint(path, checkpoint, state)
    others = {key: value for key, value in state.items() if key not in engines}
    rest = strategy._restore_state(path, checkpoint, others)
    state.update(others)
    for key, engine in engines.items():
        rest.pop(key, None)
        _load_full_weights(strategy, engine, checkpoint[key])
    return rest


def _load_full_weights(strategy: DeepSpeedStrategy, engine: Any, state_dict: dict[str, Any]) -> None:
    inner: nn.Module = engine.module
    if strategy.zero_stage >= 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=0):
            if strategy.is_global_zero:
                inner.load_state_dict(state_dict)
    else:
        inner.load_state_dict(state_dict)
    # ZeRO optimizers keep fp32 master copies: refresh them from the loaded weights.
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if refresh is not None:
        refresh()


def split_state(
    strategy: DeepSpeedStrategy, state: dict[str, Any], action: str
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """(engines by key, optimizer key -> its engine's key, the plain values) of a top-level state."""
    engines: dict[str, Any] = {}
    optimizer_engines: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, value in state.items():
        if strategy.is_engine(value):
            if not isinstance(key, str) or not _TAG.match(key):
                raise CheckpointError(
                    f"the key {key!r} of a DeepSpeed engine names its checkpoint directory: use letters, digits, "
                    "'_', '-' or '.'"
                )
            engines[key] = value
        elif id(value) in strategy._engine_of_optimizer:
            optimizer_engines[key] = strategy._engine_of_optimizer[id(value)]
        elif isinstance(value, (dict, list, tuple)) and any(
            strategy.is_engine(v) or id(v) in strategy._engine_of_optimizer for v in state_leaves(value)
        ):
            raise CheckpointError(
                f"cannot {action} the DeepSpeed engine or optimizer nested under {key!r}: put engines and their "
                "optimizers at the top level of the state, e.g. {'model': model, 'optimizer': optimizer}"
            )
        else:
            plain[key] = value
    optimizers: dict[str, str] = {}
    for key, owner in optimizer_engines.items():
        owner_key = next((k for k, engine in engines.items() if engine is owner), None)
        if owner_key is None:
            raise CheckpointError(
                f"the optimizer {key!r} is saved and loaded with its DeepSpeed engine, which is not in the "
                f"state; add its model to the state"
            )
        optimizers[key] = owner_key
    return engines, optimizers, plain


def consolidate_deepspeed_checkpoint(path: _PathLike, output_file: _PathLike | None = None) -> dict[str, Any]:
    """One full fp32 state dict per engine of a checkpoint the deepspeed strategy saved, plus its plain values.

    Reads every rank's shard in this one process (no process group needed) with
    ``deepspeed.utils.zero_to_fp32``; the result has the same keys as the state that was
    saved, minus the optimizers. With ``output_file`` it is also written there with
    ``torch.save``, a file every strategy (and ``torch.load``) can load.

    Examples:
        >>> state = consolidate_deepspeed_checkpoint("ckpt/", "ckpt.pt")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    directory = Path(path)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{os.fspath(path)!r} has no {MANIFEST}: not a checkpoint directory saved by the deepspeed strategy"
        )
    manifest = json.loads(manifest_path.read_text())
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    result: dict[str, Any] = {}
    for key in manifest["engines"]:
        if manifest.get("zero_stage", 0) == 0:
            saved = torch.load(_model_states_file(directory / key), map_location="cpu", weights_only=False)
            module_state = saved["module"]  # stage 0 saves the full module once
        else:
            module_state = get_fp32_state_dict_from_zero_checkpoint(os.fspath(directory), tag=key)
        result[key] = {k: v.float() if v.is_floating_point() else v for k, v in module_state.items()}
    result.update(_saved_plain_values(directory, manifest))
    if output_file is not None:
        tmp = Path(f"{os.fspath(output_file)}.tmp")
        torch.save(result, tmp)
        os.replace(tmp, output_file)
    return result


def _saved_plain_values(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The plain values saved with the engines (the same on every rank: read from rank 0's file)."""
    saved = torch.load(
        _model_states_file(directory / manifest["engines"][0]), map_location="cpu", weights_only=False
    )
    return dict(saved.get("lite", {}))


def _model_states_file(tag_dir: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).is_file():
            return tag_dir / name
    raise CheckpointError(
        f"{os.fspath(tag_dir)!r} holds no DeepSpeed model states file (is the checkpoint complete?)"
    )
