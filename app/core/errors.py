"""Errors a user can act on: the CLI prints their message on one line and exits 2, the GUI shows it."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input or a request that cannot be met; the message says what to fix and names the file."""


class ImageError(UserError):
    """An image that cannot be read or does not have what was asked for (channel, plane, axes)."""


class ProjectError(UserError):
    """A project folder that is missing, corrupt, or of a newer schema than this app knows."""


class AnnotationError(UserError):
    """An annotation file that cannot be parsed or names classes the task does not know."""


class ModelError(UserError):
    """A model folder whose card is missing, corrupt, or does not fit the image or pipeline."""


# OSErrors the user fixes outside the program: full disk or quota, read-only file system, permissions
USER_OS_ERRORS = {errno.ENOSPC: "no space left on the disk; free some space and run again",
                  errno.EROFS: "the folder is on a read-only disk; choose another output folder",
                  errno.EACCES: "permission denied; choose a folder you may write to (or fix its permissions)",
                  errno.EPERM: "operation not permitted; choose a folder you may write to (or fix its permissions)",
                  errno.EFBIG: "the file is too large for this file system; choose another output folder"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    USER_OS_ERRORS[errno.EDQUOT] = "the disk quota is used up; free some space and run again"


def os_error_message(error: BaseException) -> str | None:
    """One line naming the path for a disk-full / read-only / permission error (also as a cause), else None."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(current, OSError) and current.errno in USER_OS_ERRORS and not isinstance(current, BrokenPipeError):
            where = current.filename or getattr(error, "filename", None)
            return f"{where}: {USER_OS_ERRORS[current.errno]}" if where else USER_OS_ERRORS[current.errno]
        current = current.__cause__ or current.__context__
        seen += 1
    return None
