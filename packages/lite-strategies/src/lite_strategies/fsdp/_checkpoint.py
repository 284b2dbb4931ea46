"""FSDP checkpoints: a torch.distributed.checkpoint directory of shards plus ``lite_state.pt``, where each
module's and optimizer's entry is a marker naming its slot in the shards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lite_strategies._errors import CheckpointError
from lite_strategies._state import map_state

#: The file of a sharded checkpoint directory that holds everything but the sharded states.
META_FILE = "lite_state.pt"
# In META_FILE, a module's or optimizer's entry is this marker naming its slot in the DCP files.
MARKER = "__lite_fsdp_sharded__"


class FullLoader:
    """Reads a whole DCP directory into memory on first use (full tensors), for entries asked for as values."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._state: dict[str, Any] | None = None

    def __getitem__(self, slot: str) -> Any:
        if self._state is None:
            self._state = _read_full_dcp(self._directory)
        return self._state[slot]


def _read_full_dcp(directory: Path) -> dict[str, Any]:
    """Every entry of a DCP directory as full tensors, in this process only (no collective)."""
    try:  # what torch's dcp_to_torch_save does, in memory
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    except ImportError:  # pragma: no cover - private names moved: go through a file
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "full.pt"
            dcp_to_torch_save(directory, target)
            loaded: dict[str, Any] = torch.load(target, map_location="cpu", weights_only=True)
            return loaded
    state: dict[str, Any] = {}
    _load_state_dict(
        state, storage_reader=FileSystemReader(directory), planner=_EmptyStateDictLoadPlanner(), no_dist=True
    )
    return state


def slot_name(where: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in where) or "state"


def marker_slot(value: Any, kind: str) -> str | None:
    if isinstance(value, dict) and MARKER in value and value.get("kind") in (kind, None):
        return str(value[MARKER])
    return None


def resolve_markers(value: Any, full: FullLoader) -> Any:
    """``value`` with every sharded-state marker replaced by that module's/optimizer's full state dict."""
    return map_state(
        value,
        lambda marker, _: full[str(marker[MARKER])] if _is_marker(marker) else marker,
        is_leaf=_is_marker,
    )


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and MARKER in value


def named_optimizer_state(
    optimizer: Optimizer, module: nn.Module, state_dict: dict[str, Any]
) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index (``optimizer.state_dict()``) re-keyed by parameter name."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if not isinstance(groups, list) or all(isinstance(p, str) for g in groups for p in g.get("params", ())):
        return state_dict
    shape = [len(g["params"]) for g in optimizer.param_groups]
    saved_shape = [len(g.get("params", ())) for g in groups]
    if shape != saved_shape:
        raise CheckpointError(
            f"the optimizer state dict has param groups of sizes {saved_shape}, but the "
            f"{type(optimizer).__name__} has {shape}: it belongs to another model or optimizer"
        )
    names = {id(param): name for name, param in module.named_parameters()}
    index_to_name = {
        index: names[id(param)]
        for saved, current in zip(groups, optimizer.param_groups)
        for index, param in zip(saved["params"], current["params"])
    }
    return {
        "state": {index_to_name[index]: value for index, value in state_dict.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [index_to_name[i] for i in group["params"]]} for group in groups
        ],
    }


def consolidate_fsdp_checkpoint(
    path: str | os.PathLike[str], output_file: str | os.PathLike[str] | None = None
) -> Any:
    """The state a sharded FSDP checkpoint directory holds, with every module and optimizer as a full state dict.

    Reads every shard in this one process (no process group, no GPU needed). Modules come back
    with the original module's parameter names, so ``model.load_state_dict(state["model"])``
    works on the plain, unwrapped model. With ``output_file`` the result is also written there
    (atomically, with ``torch.save``): a file ``torch.load`` and every strategy can read.

    Examples:
        >>> state = consolidate_fsdp_checkpoint("ckpt/", "ckpt.pt")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    from lite_strategies._checkpoint_io import TorchCheckpointIO

    directory = Path(path)
    if not (directory / ".metadata").is_file():
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a sharded FSDP checkpoint directory (it has no torch.distributed.checkpoint "
            "'.metadata' file)"
        )
    full = FullLoader(directory)
    meta_path = directory / META_FILE
    if meta_path.is_file():
        meta = TorchCheckpointIO().load_checkpoint(meta_path, map_location="cpu")
        result = resolve_markers(meta, full)
    else:  # written by other code: its top-level DCP keys are the entries
        result = _read_full_dcp(directory)
    if output_file is not None:
        TorchCheckpointIO().save_checkpoint(result, output_file)
    return result
