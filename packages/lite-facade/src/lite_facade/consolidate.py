"""Turn a sharded checkpoint (an FSDP or DeepSpeed directory) into one plain ``torch.save`` file.

The output holds one model's ``state_dict`` with the original module's parameter names, so it
loads with torch alone. Everything runs in this one process, on the CPU, without a process group.

Examples:
    ```bash
    python -m lite_facade.consolidate ckpt/ model.pt            # the checkpoint's only model
    python -m lite_facade.consolidate ckpt/ model.pt --key ema  # one of several
    ```

    ```python
    model.load_state_dict(torch.load("model.pt", weights_only=True))
    ```
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lite_strategies import CheckpointError, TorchCheckpointIO

__all__ = ["consolidate_checkpoint", "main"]

_DEEPSPEED_MANIFEST = "lite_deepspeed.json"


def consolidate_checkpoint(
    path: str | os.PathLike[str], output_file: str | os.PathLike[str] | None = None, *, key: str | None = None
) -> dict[str, Any]:
    """One model's full ``state_dict`` from a sharded checkpoint directory saved by ``LightningLite.save``.

    ``path`` is what the ``fsdp`` strategy (``state_dict_type="sharded"``, the default) or a
    ``deepspeed`` strategy wrote. ``key`` names the entry of the saved state that holds the
    model (e.g. ``"model"``); it may be left out when only one entry is a model's state. With
    ``output_file`` the state dict is also written there, atomically.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a directory; a sharded checkpoint of the fsdp or deepspeed strategy is "
            "a directory (a single file is already a plain torch.save file)"
        )
    if (directory / _DEEPSPEED_MANIFEST).is_file():
        from lite_strategies import consolidate_deepspeed_checkpoint

        state = consolidate_deepspeed_checkpoint(directory)
    elif (directory / ".metadata").is_file():
        from lite_strategies import consolidate_fsdp_checkpoint

        state = consolidate_fsdp_checkpoint(directory)
    else:
        raise CheckpointError(
            f"{os.fspath(path)!r} is neither an FSDP checkpoint (no '.metadata') nor a DeepSpeed checkpoint "
            f"saved by lite (no {_DEEPSPEED_MANIFEST!r})"
        )
    model_state = _pick_model(state, key, os.fspath(path))
    if output_file is not None:
        TorchCheckpointIO().save_checkpoint(model_state, output_file)
    return model_state


def _is_module_state(value: Any) -> bool:
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _pick_model(state: Any, key: str | None, where: str) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{where!r} holds a {type(state).__name__}, not a dict of entries")
    candidates = [k for k, v in state.items() if _is_module_state(v)]
    if key is not None:
        if key not in state:
            raise CheckpointError(f"{where!r} has no entry {key!r}; it has {sorted(state, key=str)}")
        if not _is_module_state(state[key]):
            raise CheckpointError(
                f"entry {key!r} of {where!r} is not a model's state dict; the model entries are {candidates}"
            )
        return dict(state[key])
    if len(candidates) != 1:
        raise CheckpointError(
            f"{where!r} holds {len(candidates)} model states {candidates}: name the one to write with key=... "
            "(--key on the command line)"
        )
    return dict(state[candidates[0]])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lite_facade.consolidate CHECKPOINT_DIR OUTPUT_FILE [--key KEY]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lite_facade.consolidate",
        description="Write one model's full state_dict from an fsdp/deepspeed checkpoint directory to a plain "
        "torch.save file that loads with torch alone.",
    )
    parser.add_argument("checkpoint", help="the directory LightningLite.save wrote")
    parser.add_argument("output", help="the file to write (a local path or an fsspec URL)")
    parser.add_argument(
        "--key", default=None, help="the saved entry holding the model (default: the only one)"
    )
    args = parser.parse_args(argv)
    try:
        state = consolidate_checkpoint(args.checkpoint, args.output, key=args.key)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(state)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
