"""What travels besides the data: shapes, dtypes and pickled objects, as plain tensors (no numpy).

torch's object collectives go through numpy on some builds; these helpers only use
``pickle``, ``struct`` and ``ctypes``, and every exchange is a tensor collective of the backend.

Every tensor made here owns its memory (``torch.empty``, filled with ``ctypes.memmove``), never
borrows a Python buffer (``torch.frombuffer``): a result is then a normal tensor (it can be
resized), and freeing one needs nothing from Python (a borrowed buffer needs the GIL, which the
backend's worker thread cannot get once the interpreter finalizes).
"""

from __future__ import annotations

import ctypes
import pickle
import struct
import threading
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

#: Width of the fixed signature every rank sends first: [length, *encoding or hash]. Short, so
#: the header stays small; one or two tensors of small rank, or a few scalars, travel exactly.
SIGNATURE_WIDTH = 8


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
# 256 bytes, not more: on 2 gloo processes over loopback a 1 KiB gather measured 1.1-1.35x a
# 16-byte one, 256 bytes the same as 16 (bench/bench_collectives.py, `--header-sizes`).
HEADER_BYTES = 256
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


def _owned_bytes(data: bytes) -> torch.Tensor:
    """A 1-d uint8 host tensor holding a copy of ``data`` in memory torch owns."""
    out = torch.empty(len(data), dtype=torch.uint8)
    if data:
        ctypes.memmove(out.data_ptr(), data, len(data))
    return out


class HeaderBuffers:
    """A rank's reusable host buffers for the header exchange: its own header and everyone's.

    Reused so that the check allocates only its results (a few microseconds a call; too little
    to tell apart from the machine's noise in a 2-process run). One call at a time holds them
    (`take`); a call that finds them held (another thread) uses fresh tensors, and after a failed
    wait they are never handed out again (the backend may still write into them: `discard`).
    Results are copied out of ``gathered`` before `give_back`: nothing returned aliases them.
    """

    def __init__(self, size: int) -> None:
        self.mine = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
        self.gathered = torch.zeros(size * HEADER_BYTES, dtype=torch.uint8)
        self._lock = threading.Lock()
        self.usable = True

    def take(self) -> bool:
        return self.usable and self._lock.acquire(blocking=False)

    def give_back(self) -> None:
        self._lock.release()

    def discard(self) -> None:
        self.usable = False
        self._lock.release()


def build_header(
    encoding: list[int],
    tensors: list[torch.Tensor],
    inline: bool,
    device: torch.device,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """This rank's header on ``device``: signature, flag, and with ``inline`` the tensors' bytes.

    With ``inline`` the tensors must be on ``device`` and pass `fits_header`. ``into`` (a host
    ``HEADER_BYTES`` uint8 tensor, for a host ``device``) is written over instead of a new one;
    bytes past the inlined data are left as they were (every rank reads only what the signature
    describes).
    """
    header = into if into is not None else torch.zeros(HEADER_BYTES, dtype=torch.uint8)
    base = header.data_ptr()
    ctypes.memmove(base, struct.pack(_HEAD_FORMAT, *signature(encoding), int(inline)), _HEAD_BYTES)
    on_host = device.type == "cpu"
    if inline and on_host:
        offset = _DATA_START
        for t in map(_plain, tensors):
            nbytes = t.numel() * t.element_size()
            ctypes.memmove(base + offset, t.data_ptr(), nbytes)
            offset += _aligned(nbytes)
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


def read_heads(gathered: torch.Tensor) -> list[tuple[int, ...]]:
    """Every rank's ``(*signature, flag)`` out of the gathered headers (``world_size * HEADER_BYTES``)."""
    size = gathered.numel() // HEADER_BYTES
    if gathered.device.type == "cpu":
        view = (ctypes.c_char * gathered.numel()).from_address(gathered.data_ptr())
        return [struct.unpack_from(_HEAD_FORMAT, view, r * HEADER_BYTES) for r in range(size)]
    heads = gathered.view(size, HEADER_BYTES)[:, :_HEAD_BYTES].cpu().contiguous()
    head_bytes = ctypes.string_at(heads.data_ptr(), heads.numel())
    return [struct.unpack_from(_HEAD_FORMAT, head_bytes, r * _HEAD_BYTES) for r in range(size)]


def unpack_header(gathered: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's ``(world_size, *shape)`` result, cut out of the gathered headers.

    In host memory each rank's bytes are copied straight into the result (the fastest for a
    few hundred bytes); on another device the tensors are cut there.
    """
    size = gathered.numel() // HEADER_BYTES
    out, offset = [], _DATA_START
    on_host = gathered.device.type == "cpu"
    src = gathered.data_ptr()
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if on_host:
            result = torch.empty((size, *t.shape), dtype=t.dtype)
            dst = result.data_ptr()
            for r in range(size):
                ctypes.memmove(dst + r * nbytes, src + r * HEADER_BYTES + offset, nbytes)
            out.append(result)
        else:
            rows_view = gathered.view(size, HEADER_BYTES)[:, offset : offset + nbytes]
            out.append(rows_view.view(t.dtype).view(size, *t.shape).clone())
        offset += _aligned(nbytes)
    return out


def object_to_tensor(obj: Any, device: torch.device) -> torch.Tensor:
    """``obj`` pickled into a 1-d uint8 tensor on ``device``."""
    return _owned_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).to(device)


def tensor_to_object(buffer: torch.Tensor, size: int) -> Any:
    """The object whose pickle fills the first ``size`` bytes of the uint8 ``buffer``."""
    data = buffer[:size].cpu().contiguous()
    # The bytes straight from the tensor's memory: no numpy, no per-element Python objects.
    return pickle.loads(ctypes.string_at(data.data_ptr(), size))
