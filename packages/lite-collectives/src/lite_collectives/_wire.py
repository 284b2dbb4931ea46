"""What travels besides the data: shapes, dtypes and pickled objects, as plain tensors (no numpy).

torch's object collectives go through numpy on some builds; these helpers only use
``pickle`` and ``torch.frombuffer``, and every exchange is a tensor collective of the backend.
"""

from __future__ import annotations

import ctypes
import pickle
import struct
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
    """A small integer for ``dtype`` (the same on every rank); -1 for one outside `DTYPES`."""
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
    """The inverse of `encode_meta`: ``[(shape, dtype name), ...]``."""
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


# all_gather's checked path sends one header of HEADER_BYTES per rank first, always the same size
# whatever the tensors, so ranks whose shapes differ still meet in that collective and can all
# raise. It holds the signature, a flag saying whether the data is inside, and (when they fit) the
# tensors' bytes: small gathers (losses, metrics, a few predictions) then cost one collective.
HEADER_BYTES = 1024
_HEAD_FORMAT = f"<{SIGNATURE_WIDTH + 1}q"  # the signature, then the "data inside" flag
_HEAD_BYTES = struct.calcsize(_HEAD_FORMAT)
_ALIGN = 16  # every inlined tensor starts on a 16-byte boundary (complex128's element size)
_DATA_START = -(-_HEAD_BYTES // _ALIGN) * _ALIGN


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def fits_header(tensors: list[torch.Tensor]) -> bool:
    """Whether ``tensors`` (plain, of known dtypes, all on one device) fit inside one header."""
    if not tensors:
        return False
    device, used = tensors[0].device, _DATA_START
    for t in tensors:
        if t.device != device or t.layout != torch.strided or _CODES.get(t.dtype) is None:
            return False
        used += _aligned(t.numel() * t.element_size())
    return used <= HEADER_BYTES


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in plain contiguous memory (conjugate and negative views resolved)."""
    if t.is_contiguous() and not (t.is_conj() or t.is_neg()):
        return t
    return t.detach().resolve_conj().resolve_neg().contiguous()


def build_header(
    encoding: list[int], tensors: list[torch.Tensor], inline: bool, device: torch.device
) -> torch.Tensor:
    """This rank's header on ``device``: signature, flag, and with ``inline`` the tensors' bytes.

    With ``inline`` the tensors must be on ``device`` and pass `fits_header`.
    """
    buf = bytearray(HEADER_BYTES)
    struct.pack_into(_HEAD_FORMAT, buf, 0, *signature(encoding), int(inline))
    on_host = device.type == "cpu"
    if inline and on_host:
        offset = _DATA_START
        for t in map(_plain, tensors):
            nbytes = t.numel() * t.element_size()
            buf[offset : offset + nbytes] = ctypes.string_at(t.data_ptr(), nbytes)
            offset += _aligned(nbytes)
    header = torch.frombuffer(buf, dtype=torch.uint8)
    if on_host:
        return header
    header = header.to(device)
    if inline:  # another device: copy there, without a round trip through the host
        offset = _DATA_START
        for t in map(_plain, tensors):
            nbytes = t.numel() * t.element_size()
            header[offset : offset + nbytes].copy_(t.view(-1).view(torch.uint8))
            offset += _aligned(nbytes)
    return header


def read_heads(gathered: torch.Tensor) -> tuple[list[tuple[int, ...]], bytes | None]:
    """Every rank's ``(*signature, flag)`` out of the gathered headers (``world_size * HEADER_BYTES``).

    Also the gathered bytes themselves when they are in host memory (for `unpack_header`).
    """
    size = gathered.numel() // HEADER_BYTES
    if gathered.device.type == "cpu":
        raw = ctypes.string_at(gathered.data_ptr(), gathered.numel())
        return [struct.unpack_from(_HEAD_FORMAT, raw, r * HEADER_BYTES) for r in range(size)], raw
    heads = gathered.view(size, HEADER_BYTES)[:, :_HEAD_BYTES].cpu().contiguous()
    head_bytes = ctypes.string_at(heads.data_ptr(), heads.numel())
    return [struct.unpack_from(_HEAD_FORMAT, head_bytes, r * _HEAD_BYTES) for r in range(size)], None


def unpack_header(
    gathered: torch.Tensor, raw: bytes | None, tensors: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Each tensor's ``(world_size, *shape)`` result, cut out of the gathered headers.

    ``raw``: the gathered bytes when in host memory (cut in Python, the fastest for a few
    hundred bytes); otherwise the tensors are cut on their device.
    """
    size = gathered.numel() // HEADER_BYTES
    out, offset = [], _DATA_START
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if raw is not None:
            rows = b"".join(
                raw[r * HEADER_BYTES + offset : r * HEADER_BYTES + offset + nbytes] for r in range(size)
            )
            out.append(torch.frombuffer(bytearray(rows), dtype=t.dtype).view(size, *t.shape))
        else:
            rows_view = gathered.view(size, HEADER_BYTES)[:, offset : offset + nbytes]
            out.append(rows_view.view(t.dtype).view(size, *t.shape).clone())
        offset += _aligned(nbytes)
    return out


def object_to_tensor(obj: Any, device: torch.device) -> torch.Tensor:
    """``obj`` pickled into a 1-d uint8 tensor on ``device``."""
    data = bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return torch.frombuffer(data, dtype=torch.uint8).to(device)


def tensor_to_object(buffer: torch.Tensor, size: int) -> Any:
    """The object whose pickle fills the first ``size`` bytes of the uint8 ``buffer``."""
    data = buffer[:size].cpu().contiguous()
    # The bytes straight from the tensor's memory: no numpy, no per-element Python objects.
    return pickle.loads(ctypes.string_at(data.data_ptr(), size))
