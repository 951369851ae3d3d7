"""Errors a user can act on: the CLI prints their message on one line and exits 2, the GUI shows it."""


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
