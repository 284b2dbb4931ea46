"""What travels besides the data: shapes, dtypes and pickled objects, as plain tensors (no numpy).

torch's object collectives go through numpy on some builds; these helpers only use
``pickle`` and ``torch.frombuffer``, and every exchange is a tensor collective of the backend.
"""

from __future__ import annotations

import ctypes
import pickle
from typing import Any

import torch

# Every dtype a collective may carry gets a small integer code, stable across ranks.
DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
)
_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}

#: Width of the fixed signature every rank sends first: [length, *encoding or hash].
SIGNATURE_WIDTH = 16


def dtype_code(dtype: torch.dtype) -> int:
    """A small integer for ``dtype`` (the same on every rank); -1 for one outside :data:`DTYPES`."""
    return _CODES.get(dtype, -1)


def dtype_name(code: int) -> str:
    return str(DTYPES[code]).removeprefix("torch.") if 0 <= code < len(DTYPES) else "other"


def encode_meta(tensors: list[torch.Tensor]) -> list[int]:
    """``[count, (dtype, ndim, *shape) per tensor]``: everything all_gather needs to agree on."""
    out = [len(tensors)]
    for t in tensors:
        out.append(_CODES.get(t.dtype, -1))
        out.append(t.dim())
        out.extend(t.shape)
    return out


def decode_meta(encoding: list[int]) -> list[tuple[tuple[int, ...], str]]:
    """The inverse of :func:`encode_meta`: ``[(shape, dtype name), ...]``."""
    count, pos, out = encoding[0], 1, []
    for _ in range(count):
        code, ndim = encoding[pos], encoding[pos + 1]
        out.append((tuple(encoding[pos + 2 : pos + 2 + ndim]), dtype_name(code)))
        pos += 2 + ndim
    return out


def signature(encoding: list[int]) -> list[int]:
    """A fixed-width vector equal across ranks exactly when their encodings are (up to a 64-bit hash).

    Short encodings (the common case: a few tensors of small rank) travel whole, so equality is
    exact; longer ones travel as their length and a hash of int tuples, which is the same in
    every process (Python randomizes the hashes of str and bytes only).
    """
    if len(encoding) < SIGNATURE_WIDTH:
        return [len(encoding), *encoding, *([0] * (SIGNATURE_WIDTH - 1 - len(encoding)))]
    return [len(encoding), hash(tuple(encoding)), *([0] * (SIGNATURE_WIDTH - 2))]


def object_to_tensor(obj: Any, device: torch.device) -> torch.Tensor:
    """``obj`` pickled into a 1-d uint8 tensor on ``device``."""
    data = bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return torch.frombuffer(data, dtype=torch.uint8).to(device)


def tensor_to_object(buffer: torch.Tensor, size: int) -> Any:
    """The object whose pickle fills the first ``size`` bytes of the uint8 ``buffer``."""
    data = buffer[:size].cpu().contiguous()
    # The bytes straight from the tensor's memory: no numpy, no per-element Python objects.
    return pickle.loads(ctypes.string_at(data.data_ptr(), size))
