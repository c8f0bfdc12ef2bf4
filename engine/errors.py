"""User-facing errors.

Everything a user can get wrong (a file, an argument, a value) raises ``CgofError`` with a single
line that names the thing, what is wrong, and what was expected. The CLI turns it into exit code 2
and the app shows it in its status line; neither prints a traceback.
"""

from __future__ import annotations


class CgofError(Exception):
    """A one-line, user-facing error (bad file, bad argument, bad value)."""

    def __init__(self, message: str):
        # Keep it on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


class FileFormatError(CgofError):
    """A file exists but its content is not what we expected."""


def require(condition: bool, message: str, exc: type[CgofError] = CgofError) -> None:
    """Raise ``exc(message)`` unless ``condition`` holds."""
    if not condition:
        raise exc(message)
