"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medclf.errors import WriteError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_text",
    "make_dir",
    "remove_temp_files",
    "write_error",
]

# errors that mean "this place cannot be written", as opposed to a bug in the code writing it
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EIO,
    errno.ENAMETOOLONG,
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (``safetensors.save_file``, ``onnx.save``, matplotlib). A disk that is full,
    read-only or not ours becomes a one-line ``WriteError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        # mkstemp makes 0600 files; give the result the permissions an ordinary write would have
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except Exception as exc:
        code = _errno(exc)
        if code in _WRITE_ERRNOS:
            raise write_error(path, exc) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def make_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, with a ``WriteError`` naming it when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files ``atomic_path`` leaves in ``folder`` when a process is killed mid-write."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _errno(exc: BaseException) -> int | None:
    """The OS error number of a failed write: an ``OSError``'s, or the one safetensors puts in its message
    (``SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)``)."""
    if isinstance(exc, OSError):
        return exc.errno
    if type(exc).__name__ == "SafetensorError":
        m = re.search(r"\(os error (\d+)\)", str(exc))
        return int(m.group(1)) if m else None
    return None


def write_error(path: str | os.PathLike[str], exc: BaseException) -> WriteError:
    """A one-line error for a failed write of ``path``: what the system said and what to do."""
    code = _errno(exc)
    reason = os.strerror(code) if code else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free space on that disk, or write somewhere else (e.g. another --out folder)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a folder you can write to (e.g. another --out folder)"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "a part of the path is a file, not a folder; choose another path (e.g. another --out folder)"
    else:
        fix = "check the disk and the path, or write somewhere else (e.g. another --out folder)"
    return WriteError(f"cannot write {path}: {reason}; {fix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike[str], mode: str) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
        yield fh
        fh.flush()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with _atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with _atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json_text(obj, indent))


def json_text(obj: Any, indent: int = 2) -> str:
    """The text ``atomic_write_json`` writes for ``obj`` (for a caller that needs its digest first)."""
    return json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths: the common non-JSON values in metrics and run descriptions
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
