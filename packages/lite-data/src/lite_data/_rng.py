"""This process's random number generator states as plain data, to save in a checkpoint and restore.

Everything is a tensor, an int, a float, a string, None or a tuple/list/dict of them, so a
checkpoint holding it loads under ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lite_data._errors import SeedError
from lite_data._seed import _numpy


def rng_states() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's legacy global RNG (if installed), torch's CPU and CUDA RNGs.

    CUDA states are included only where CUDA is already initialised in this process (asking
    for them would otherwise start CUDA).

    Examples:
        >>> states = rng_states()
        >>> a = torch.rand(2)
        >>> set_rng_states(states)
        >>> torch.equal(torch.rand(2), a)
        True
    """
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "torch": torch.get_rng_state(),
    }
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        states["numpy"] = (
            str(kind),
            torch.from_numpy(keys.astype("int64")),
            int(pos),
            int(has_gauss),
            float(cached),
        )
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what [`rng_states`][lite_data.rng_states] returned (a missing NumPy or CUDA part is left as it is)."""
    if not isinstance(states, dict) or "torch" not in states or "python" not in states:
        raise SeedError(
            f"set_rng_states: expected the dict that rng_states() returns (keys 'python', 'torch', ...), "
            f"got {type(states).__name__}{sorted(states) if isinstance(states, dict) else ''}"
        )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    torch.set_rng_state(states["torch"])
    np = _numpy()
    if np is not None and states.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, np.asarray(keys.tolist(), dtype="uint32"), pos, has_gauss, cached))
    if states.get("cuda") is not None and torch.cuda.device_count() > 0:  # device_count: no driver init
        cuda = list(states["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
