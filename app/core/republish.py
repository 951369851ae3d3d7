"""Replacing an item's result folder with a new complete set without losing what the user put or changed there.

A redone item's files are written into a hidden folder that is renamed over the old one, so the
folder always names one complete set.  Before the swap, :func:`carry_over` brings into the new set
what the old folder holds that must survive, by the rule of app.core.outputs:

* a file both sets have is replaced (an app output from before), unless it is a report the app
  recorded and the user changed since, or a read-only file: that one keeps its name and the new
  file takes the first free versioned name (``sec (2).xlsx``), recorded as app-written;
* a file only the old folder has (the user's notes, a changed report) is kept; an unchanged
  recorded report that the new set no longer makes goes;
* a kept report stays recorded as changed (its old sha256) or, when its content is the app's
  (kept for being read-only), as :data:`app.core.outputs.KEPT`, so later runs keep it too;
* ``force`` replaces the files both sets have; what only the old folder has is still kept
  (``--force`` redoes the app's outputs, it does not clear out the user's own files);
* ``drop`` names files only the old set has that describe its results (a pipeline's ``redo_drops``,
  such as an evaluation): they go with it.

Files are hard-linked (copied where links fail), so the old folder stays whole until the swap.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Collection
from pathlib import Path

from app.core.outputs import (
    KEPT, MANIFEST, KeptReport, file_digest, recorded, versioned, why_keep, write_records,
)


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``target`` as a hard link to ``source`` (a copy with its mode where the file system refuses links)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _bring(source: Path, target: Path) -> None:
    """``source`` (a file or folder of the old set) into the new set at ``target``; the source stays as it is."""
    if source.is_symlink():
        shutil.copy2(source, target, follow_symlinks=False)  # the link itself, not what it points to
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _why_protected(old: Path, old_records: dict[str, str]) -> str | None:
    """Why the old ``old`` must not be replaced by a new file of its name (None: it is an app output from before)."""
    if old.is_symlink() or not old.is_file():
        return "not a file"
    if not old.stat().st_mode & stat.S_IWUSR:  # the mode bit, as app.core.outputs.why_keep
        return "read-only"
    return why_keep(old) if old.name in old_records else None


def _keep_record(kept: Path, old_records: dict[str, str], records: dict[str, str], beside_new: bool) -> None:
    """Record a kept file of the old set so no later run replaces it: its old sha256 while it differs from it
    (changed), else :data:`KEPT`; a file only the old set has that the app never recorded (the user's own)
    stays unrecorded, while one kept ``beside_new`` (read-only) is marked :data:`KEPT`."""
    before = old_records.get(kept.name)
    if before is not None:
        records[kept.name] = before if before != KEPT and file_digest(kept) != before else KEPT
    elif beside_new:
        records[kept.name] = KEPT


def carry_over(old: str | os.PathLike[str], new: str | os.PathLike[str], force: bool = False,
               drop: Collection[str] = ()) -> list[KeptReport]:
    """Bring into ``new`` (a complete new set) what of ``old`` (the folder it will replace) must survive.

    Returns what was kept beside a new file, with paths in ``old`` (where both will be after the
    swap), for app.core.outputs.note_kept.  Subfolders both sets have follow the same rule.
    """
    old, new = Path(old), Path(new)
    if not old.is_dir() or old.is_symlink():
        return []
    old_records, new_records = recorded(old), recorded(new)
    records = dict(new_records)
    produced = {entry.name for entry in new.iterdir()}
    both: list[Path] = []
    for entry in sorted(old.iterdir()):
        if entry.name == MANIFEST:
            continue
        if entry.name in produced:
            both.append(entry)
        elif entry.name in drop:
            continue
        elif not (entry.name in old_records and why_keep(entry) is None):  # an unchanged report not made now goes
            _bring(entry, new / entry.name)
            _keep_record(entry, old_records, records, beside_new=False)
    kept: list[KeptReport] = []
    for entry in both:
        target = new / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            kept += carry_over(entry, target, force)
            continue
        reason = None if force else _why_protected(entry, old_records)
        if reason is None:
            continue
        number = 2
        while os.path.lexists(versioned(target, number)):
            number += 1
        moved = versioned(target, number)
        os.replace(target, moved)
        digest = records.pop(entry.name, None) or (file_digest(moved) if moved.is_file() else None)
        if digest is not None:
            records[moved.name] = digest  # the new file is the app's; the kept one is the user's now
        _bring(entry, target)
        _keep_record(entry, old_records, records, beside_new=True)
        kept.append(KeptReport(entry, old / moved.name, reason))
    if records != new_records:
        write_records(new, records)
    return kept


def replace_folder(new: str | os.PathLike[str], final: str | os.PathLike[str], force: bool = False,
                   aside: str = ".old-", drop: Collection[str] = ()) -> list[KeptReport]:
    """Rename the complete set ``new`` to ``final`` after :func:`carry_over` (``force``, ``drop``); returns what was kept.

    An existing ``final`` is renamed aside (``<aside><name>-<random>``) first and removed after, so
    ``final`` holds the old set or the new one, never a mix or a half.
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.rename(new, final)
        return []
    kept = carry_over(final, new, force, drop)
    old = final.with_name(f"{aside}{final.name}-{secrets.token_hex(4)}")
    os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return kept
