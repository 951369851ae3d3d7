"""Reports (workbooks, CSV tables) that never overwrite a file the user may have changed.

A report is written atomically (:mod:`app.core.atomic`).  Before it replaces an existing file,
the file's sha256 is compared with the one recorded when the app last wrote it (in the hidden
``.stagescope-reports.json`` of its folder): a file nobody touched since is replaced, because
nothing can be lost; a file that was edited (a sheet added in Excel), made read-only, or that the
app never wrote is kept, and the new report gets the first free versioned name
(``batch (2).xlsx``, ``batch (3).xlsx`` ...).  ``force=True`` (the CLI's ``--force``) replaces
it anyway.  Callers learn where a report went from the returned path, and a CLI command collects
every kept file with :func:`collect_kept` to tell the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from app.core.atomic import atomic_path, atomic_write_text

MANIFEST = ".stagescope-reports.json"
KEPT = "kept"  # recorded instead of a sha256: a file a redone item kept as the user's (app.core.republish)
_KEPT: ContextVar[list[KeptReport] | None] = ContextVar("stagescope_kept_reports", default=None)


@dataclass(frozen=True)
class KeptReport:
    """An existing report left as it was (``kept``) and where the new one went instead (``written``)."""

    kept: Path
    written: Path
    reason: str

    def message(self) -> str:
        """One line for the user: what was kept, why, and where the new report is."""
        return f"kept {self.kept} ({self.reason}); the new report is {self.written}"


def _sha256(path: Path) -> str | None:
    """Hex sha256 of a file, None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    """File name -> sha256 of what the app wrote into ``folder`` (empty when absent or unreadable)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def recorded(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The reports the app wrote into ``folder``: file name -> sha256 of what it wrote."""
    return _manifest(Path(folder))


def write_records(folder: str | os.PathLike[str], files: dict[str, str]) -> None:
    """Replace ``folder``'s record of app-written reports with ``files`` (name -> sha256); a failure only costs
    versioned copies later (a read-only folder cannot hold the record)."""
    try:
        atomic_write_text(Path(folder) / MANIFEST, json.dumps({"version": 1, "files": files}, indent=1) + "\n")
    except OSError:
        pass


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """Hex sha256 of a file as the record keeps it, None when it cannot be read."""
    return _sha256(Path(path))


def _record(path: Path, digest: str) -> None:
    """Remember that the app wrote ``path`` with content ``digest`` (a lost record only costs a versioned copy)."""
    files = _manifest(path.parent)
    files[path.name] = digest
    write_records(path.parent, files)


def why_keep(path: str | os.PathLike[str]) -> str | None:
    """Why an existing file at ``path`` must not be replaced, or None when replacing it loses nothing."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        return "not a file"
    if not path.stat().st_mode & stat.S_IWUSR:  # the mode bit, not os.access: root may write anything
        return "read-only"
    recorded = _manifest(path.parent).get(path.name)
    if recorded is None:
        return "not written by Stagescope"
    if recorded == KEPT:
        return "kept as yours by an earlier run"
    if _sha256(path) != recorded:
        return "changed since Stagescope wrote it"
    return None


def versioned(path: Path, number: int) -> Path:
    """``name (number).suffix`` beside ``path`` (multi-part suffixes such as ``.ome.tif`` kept whole)."""
    name = path.name
    stem, dot, suffix = name.partition(".")
    return path.with_name(f"{stem} ({number}){dot}{suffix}")


def report_target(path: str | os.PathLike[str], force: bool = False) -> tuple[Path, str | None]:
    """Where a new report meant for ``path`` goes, and why ``path`` itself was kept (None: it was not).

    ``path`` when it is free, ``force`` is set, or it holds only what the app wrote there; else the
    first versioned name for which the same holds.
    """
    path = Path(path)
    reason = None if force else why_keep(path)
    if reason is None:
        return path, None
    number = 2
    while why_keep(versioned(path, number)) is not None:
        number += 1
    return versioned(path, number), reason


def remember(path: str | os.PathLike[str]) -> None:
    """Record a report the app has just written by other means, so a later run may replace it."""
    path = Path(path)
    digest = _sha256(path)
    if digest is not None:
        _record(path, digest)


def note_kept(kept: Path, written: Path, reason: str) -> None:
    """Tell the :func:`collect_kept` block in force that ``kept`` stayed and the new report is ``written``."""
    collected = _KEPT.get()
    if collected is not None:
        collected.append(KeptReport(kept, written, reason))


def free_stem(folder: str | os.PathLike[str], stem: str, suffixes: Sequence[str], force: bool = False) -> str:
    """A stem for a set of reports written together (``stem.txt``, ``stem.csv`` ...) that replaces none the user changed.

    ``stem`` itself when every file of the set may be replaced (or ``force``), else ``stem (2)``,
    ``stem (3)`` ... (reported to :func:`collect_kept`), so the files of one run keep one name.
    """
    folder = Path(folder)
    reasons = [] if force else [r for r in (why_keep(folder / f"{stem}{s}") for s in suffixes) if r]
    if not reasons:
        return stem
    number = 2
    while any(why_keep(folder / f"{stem} ({number}){s}") for s in suffixes):
        number += 1
    chosen = f"{stem} ({number})"
    note_kept(folder / f"{stem}{suffixes[0]}", folder / f"{chosen}{suffixes[0]}", reasons[0])
    return chosen


def save_report(path: str | os.PathLike[str], write: Callable[[Path], object], force: bool = False) -> Path:
    """Write a report meant for ``path`` with ``write(temporary_path)``; returns the path it was written to.

    An existing file the user may have changed is kept (see the module doc) and recorded for
    :func:`collect_kept`.
    """
    target, reason = report_target(path, force)
    with atomic_path(target) as tmp:
        write(tmp)
        digest = _sha256(tmp)
    if digest is not None:
        _record(target, digest)
    if reason is not None:
        note_kept(Path(path), target, reason)
    return target


def save_report_text(path: str | os.PathLike[str], text: str, force: bool = False) -> Path:
    """:func:`save_report` for text (CSV) written byte for byte as UTF-8."""
    return save_report(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")), force)


@contextmanager
def collect_kept() -> Iterator[list[KeptReport]]:
    """Collect the reports kept (and where their replacements went) by the writes inside the block."""
    kept: list[KeptReport] = []
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)
