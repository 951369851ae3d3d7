"""Atomic file writes: write a temporary file beside the target, fsync it, then rename it into place.

A reader (or a crash) therefore sees either the old file or the complete new one, never half a
file.  :func:`atomic_path` serves writers that want a file name rather than bytes (tifffile,
openpyxl, ``torch.save``).  Only plain files are handled, not directories.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


def _fsync_file(path: Path) -> None:
    """Flush a finished file's data to disk so the rename cannot expose an empty file after a crash."""
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:  # a writer that left its file read-only; POSIX can still fsync it
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush the directory entry of a rename (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: directories cannot be opened, and renames are durable anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden temporary name in ``path``'s folder that keeps the full file name at its end.

    Keeping the name (``.tmp-3f2a9c.section.ome.tif``) keeps every suffix, which writers such as
    tifffile use to choose the format.
    """
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}.{path.name}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block succeeds.

    The parent folder is created if needed.  On any exception (or if the block wrote nothing) the
    temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not error.filename:  # a full disk while writing: name the file
            error.filename = str(target)
        elif isinstance(error, Exception) and not isinstance(error, OSError) and _disk_full(target.parent):
            # writers such as torch.save report a full disk as their own RuntimeError: say what it was
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from error
        raise
    _fsync_dir(target.parent)


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether ``folder``'s disk has less than ``margin`` bytes free (False when that cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, byte for byte (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def json_default(value: Any) -> Any:
    """Turn the non-JSON values results carry (numpy/torch scalars and arrays, paths, sets) into JSON."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def to_json_text(obj: Any, indent: int | None = 2) -> str:
    """Serialise ``obj`` the way :func:`atomic_write_json` does (UTF-8 text, trailing newline)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=json_default) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; numpy values and paths are converted."""
    return atomic_write_text(path, to_json_text(obj, indent=indent))


def read_json(path: str | os.PathLike[str], error: type[Exception], what: str, missing: str | None = None) -> Any:
    """Parse a JSON file, turning a missing or unreadable one into ``error`` naming the file (and ``what`` it is).

    ``missing`` replaces the message for an absent file (e.g. "not a model folder"); with it None
    an absent file reads as unreadable too.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(missing or f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} {path} is corrupt and cannot be read: {exc}") from exc
