"""Locks between processes (CLI, GUI, batch workers) on one project or results folder, via ``filelock``.

``filelock`` uses ``flock``/``fcntl`` on Linux and macOS and ``LockFileEx`` on Windows; the operating
system drops a lock when its process dies, so a crash never leaves a folder locked.  The lock files
are hidden (``.project.json.lock``, ``.stagescope-writing.lock``) and stay in the folder; they hold
no data.

* :func:`project_lock`: held around every read-modify-write of ``project.json`` (short; others wait).
* :func:`results_writer`: held by the one run that writes a results folder (long; a second writer
  is refused at once with a one-line error rather than mixing its files with the first one's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from app.core.errors import ProjectError, UserError

PROJECT_LOCK_FILE = ".project.json.lock"
RESULTS_LOCK_FILE = ".stagescope-writing.lock"
PROJECT_LOCK_TIMEOUT_S = 60.0
"""How long a change to project.json waits for another process's change (they take milliseconds)."""

__all__ = ["PROJECT_LOCK_FILE", "RESULTS_LOCK_FILE", "PROJECT_LOCK_TIMEOUT_S", "project_lock", "hold_project_lock",
           "results_writer"]


def project_lock(folder: str | os.PathLike[str]) -> FileLock:
    """The lock object of the project in ``folder`` (reentrant: one object may be acquired again inside)."""
    return FileLock(Path(folder) / PROJECT_LOCK_FILE)


@contextmanager
def hold_project_lock(lock: FileLock, timeout: float | None = None) -> Iterator[None]:
    """Hold ``lock`` (from :func:`project_lock`), waiting up to ``timeout`` s; failures are ProjectError."""
    wait = PROJECT_LOCK_TIMEOUT_S if timeout is None else timeout
    folder = Path(lock.lock_file).parent
    try:
        lock.acquire(timeout=wait)
    except Timeout as exc:
        raise ProjectError(f"project {folder} is being changed by another Stagescope process (waited "
                           f"{wait:.0f} s for {PROJECT_LOCK_FILE}); try again when it has finished") from exc
    except OSError as exc:
        raise ProjectError(f"cannot change project {folder}: cannot create its lock file "
                           f"({exc.strerror or exc})") from exc
    try:
        yield
    finally:
        lock.release()


@contextmanager
def results_writer(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Be the only writer of results ``folder`` (created if missing) while the block runs.

    Refuses at once (UserError) when another process (or another thread of this one) writes there,
    so two runs never interleave their files in one folder; one thread may nest it (reentrant).
    Release happens in the thread that acquired (jobs are closed in the thread that drains them).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    key = folder.absolute()
    lock = _WRITERS.get(key) or _WRITERS.setdefault(key, FileLock(key / RESULTS_LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise UserError(f"{folder} is being written by another Stagescope run; wait until it has finished "
                        "or choose another output folder") from exc
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: cannot create its lock file ({exc.strerror or exc})") from exc
    try:
        yield folder
    finally:
        if lock.lock_counter == 1:
            _drop_lock_file_of_empty(folder)
        lock.release()


def _drop_lock_file_of_empty(folder: Path) -> None:
    """Unlink the lock file (still held) when it is all the folder holds: a failed run leaves it empty.

    Done while still holding it.  Writers never wait for this lock (they are refused at once), so
    only one that opened the old file in the same microsecond could lock a stale file; the folder
    holds no results then, so nothing can be interleaved.
    """
    try:
        if [p.name for p in folder.iterdir()] == [RESULTS_LOCK_FILE]:
            (folder / RESULTS_LOCK_FILE).unlink()
    except OSError:
        pass


_WRITERS: dict[Path, FileLock] = {}
"""One lock object per results folder in this process, so nesting :func:`results_writer` does not lock itself out."""
