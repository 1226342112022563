"""The errors and warnings gc10lib raises for bad input, so callers can tell them from bugs.

Every error a user can cause (a wrong path, a corrupt file, an unknown class, a result that
already exists) is a :class:`Gc10Error`. The subclasses also derive from the matching built-in
error, so ``except ValueError`` keeps working. ``gc10`` prints a :class:`Gc10Error` as one line;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class Gc10Error(Exception):
    """Base of every error gc10lib raises on purpose; the message names the file and the problem.

    >>> try:
    ...     gc10lib.predict("model.keras", "empty_folder/")
    ... except gc10lib.Gc10Error as exc:
    ...     print(exc)   # empty_folder/: no image files found (looked for .jpg, ...)
    """


class InputError(Gc10Error, ValueError):
    """A value, file or dataset that gc10lib cannot use."""


class NotFoundError(Gc10Error, FileNotFoundError):
    """A path that does not exist."""


class OutputExistsError(Gc10Error, FileExistsError):
    """An output that would overwrite earlier results."""


class SetupError(Gc10Error, RuntimeError):
    """Something missing from the environment: a download that failed, an optional package."""


class SkippedImageWarning(UserWarning):
    """An image left out (unreadable, corrupt or unsupported); the message names the file."""
