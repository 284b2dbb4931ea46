"""Saving and loading checkpoints: atomic local writes, any fsspec URL, safe loads, clear errors.

A path is either local (a plain path, or a ``file://`` URL) or a URL of another filesystem
(``memory://``, ``s3://``, ``gs://``, ...). Local files are written atomically; URLs go through
fsspec, an optional dependency (``pip install fsspec``, the extra ``lite-strategies[fsspec]``), and never become a
local directory named after the URL.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from lite_strategies._errors import CheckpointError

_PathLike = str | os.PathLike[str]

# torch.save's legacy (pre-1.6, non-zip) format starts with its pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_FSSPEC_HINT = (
    "pip install fsspec  (or, from the repository: pip install './packages/lite-strategies[fsspec]')"
)


def is_url(path: _PathLike) -> bool:
    """Whether ``path`` is a URL of a filesystem other than the local one (``file://`` is local).

    Examples:
        >>> is_url("s3://bucket/ckpt.pt"), is_url("file:///tmp/ckpt.pt"), is_url("ckpt.pt")
        (True, False, False)
    """
    match = _URL.match(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
    return bool(match) and match.group("scheme").lower() != "file"  # type: ignore[union-attr]


def local_path(path: _PathLike) -> Path:
    """``path`` as a local `Path` (a ``file://`` URL becomes its path)."""
    text = os.fspath(path)
    if text.lower().startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text)


def url_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and the path inside it for ``url``; a clear error names what to install."""
    try:
        import fsspec
    except ImportError:
        raise CheckpointError(
            f"checkpoint path {url!r} is a URL; reading and writing URLs needs fsspec, which is not installed: "
            f"{_FSSPEC_HINT}. Local paths need nothing."
        ) from None
    try:
        fs, inner = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        # fsspec names the package that implements the protocol (s3fs, gcsfs, ...).
        raise CheckpointError(f"checkpoint path {url!r}: {exc}") from None
    return fs, inner


class CheckpointIO(ABC):
    """How a strategy writes and reads checkpoint files. Subclass it to save elsewhere or otherwise."""

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PathLike) -> None:
        """Write ``checkpoint`` to ``path``; a reader never sees a partial file."""

    @abstractmethod
    def load_checkpoint(
        self, path: _PathLike, map_location: Any = None, *, weights_only: bool = True
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path`` with tensors mapped by ``map_location``."""

    def remove_checkpoint(self, path: _PathLike) -> None:
        """Delete the checkpoint at ``path`` (a file or a directory, local or a URL); missing is fine."""
        if is_url(path):
            fs, inner = url_filesystem(os.fspath(path))
            if fs.exists(inner):
                fs.rm(inner, recursive=True)
            return
        p = local_path(path)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class TorchCheckpointIO(CheckpointIO):
    """``torch.save`` / ``torch.load`` with an atomic write and ``weights_only=True`` loads by default.

    A local checkpoint is written to a temporary file ``.<name>.<pid>.<random>.tmp`` in the
    target's directory, then renamed over the target with ``os.replace``: a process that dies
    at any point leaves either the previous file or the new one, never a partial one. The
    temporary file of a save that was killed is removed by the next save to the same target
    (once the process that wrote it is gone). ``fsync=True`` also flushes the file to the disk
    before the rename, so that a power loss or kernel crash cannot leave an empty file either;
    it costs a disk flush per save (e.g. +35% on a 100 MB checkpoint), which is why it is
    opt-in, as for ``torch.save``.

    A URL (``memory://``, ``s3://``, ...) is written with one fsspec upload of the whole file,
    which object stores publish atomically.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PathLike) -> None:
        """Atomically write ``checkpoint`` to ``path`` (parent directories are created)."""
        if is_url(path):
            self._save_url(checkpoint, os.fspath(path))
            return
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"
        )
        os.close(fd)
        try:
            torch.save(checkpoint, tmp_name)  # by name: torch's own C++ writer, faster than a Python file
            if self.fsync:
                sync_fd = os.open(tmp_name, os.O_RDONLY)
                try:
                    os.fsync(sync_fd)
                finally:
                    os.close(sync_fd)
            # mkstemp creates the file 0600; give it the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_name, 0o666 & ~umask)
            os.replace(tmp_name, target)
        except Exception as exc:
            Path(tmp_name).unlink(missing_ok=True)
            raise _naming_target(exc, target, tmp_name) from exc
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _save_url(self, checkpoint: dict[str, Any], url: str) -> None:
        fs, inner = url_filesystem(url)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise fully first: a failing object never reaches the store
        parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(inner, "wb") as f:
            f.write(buffer.getbuffer())

    def load_checkpoint(
        self, path: _PathLike, map_location: Any = None, *, weights_only: bool = True
    ) -> dict[str, Any]:
        """Load ``path``; raise [`CheckpointError`][lite_strategies.CheckpointError] naming it if it is not a readable checkpoint.

        ``weights_only=True`` (the default) loads tensors, containers and primitive types only;
        pass ``weights_only=False`` to unpickle arbitrary objects from a file you trust.
        """
        if is_url(path):
            url = os.fspath(path)
            fs, inner = url_filesystem(url)
            if not fs.exists(inner):
                raise FileNotFoundError(f"checkpoint {url!r} does not exist")
            if fs.isdir(inner):
                raise CheckpointError(
                    f"checkpoint {url!r} is a directory; TorchCheckpointIO reads files written by torch.save"
                )
            with fs.open(inner, "rb") as f:
                data = f.read()
            return _load(
                io.BytesIO(data), url, data[: len(_LEGACY_MAGIC)], len(data), map_location, weights_only
            )
        p = local_path(path)
        if not p.exists():
            raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
        if p.is_dir():
            raise CheckpointError(
                f"checkpoint {str(p)!r} is a directory; TorchCheckpointIO reads files written by torch.save"
            )
        with open(p, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        return _load(p, str(p), head, p.stat().st_size, map_location, weights_only)


def _load(source: Any, name: str, head: bytes, size: int, map_location: Any, weights_only: bool) -> Any:
    if not (head.startswith((b"PK\x03\x04", _LEGACY_MAGIC))):
        # Neither torch.save's zip archive nor its legacy format: never hand it to the unpickler.
        raise CheckpointError(
            f"checkpoint {name!r} ({size} bytes) is not a file written by torch.save (it does not start "
            f"like one: {head[:8]!r}); it is corrupt or another kind of file"
        )
    try:
        return torch.load(source, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if weights_only and "Weights only load failed" in str(exc) and _is_complete_archive(source):
            raise CheckpointError(
                f"checkpoint {name!r} holds objects that weights_only=True refuses to load "
                f"(only tensors, containers and primitive types are allowed). If you trust the file, "
                f"load it with weights_only=False. Details: {_first_line(exc)}"
            ) from exc
        raise _corrupt(name, size, exc) from exc
    except (PermissionError, FileNotFoundError):
        raise
    except Exception as exc:
        # A cut-off archive or foreign bytes surface as RuntimeError, OSError(EINVAL),
        # EOFError, KeyError... from torch's readers: all mean "not a readable checkpoint".
        raise _corrupt(name, size, exc) from exc


def _is_complete_archive(source: Any) -> bool:
    """Whether ``source`` is a whole zip archive with a pickle inside (not a cut-off or foreign file)."""
    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        with zipfile.ZipFile(source) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist()) and archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _corrupt(name: str, size: int, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {name!r} ({size} bytes) is truncated or is not a file written by torch.save: "
        f"{_first_line(exc)}"
    )


def _naming_target(exc: Exception, target: Path, tmp_name: str) -> Exception:
    """``exc`` re-worded to name the checkpoint being written instead of its temporary file."""
    detail = str(exc).replace(tmp_name, str(target)) or type(exc).__name__
    message = f"could not save checkpoint {str(target)!r}: {detail}"
    try:
        renamed = type(exc)(message)
    except Exception:
        return CheckpointError(message)
    return renamed if str(renamed) == message else CheckpointError(message)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files that a killed save to ``target`` left behind (their writer is gone)."""
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit():  # not one of ours (e.g. another tool's temporary)
            continue
        pid = int(pid_text)
        if pid == os.getpid() or not _pid_alive(pid):
            entry.unlink(missing_ok=True)
