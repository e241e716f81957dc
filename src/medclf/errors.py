"""One exception type for every problem a user can fix.

The CLI prints ``MedclfError`` as a short message (no traceback) and exits with status 2, so every
message must say *what* is wrong (naming the file, row or field) and *how* to fix it.
"""

from __future__ import annotations

__all__ = ["BadImageError", "ConfigError", "DataError", "MedclfError", "WriteError"]


class MedclfError(Exception):
    """A problem with the user's input, data or environment, with a message that says how to fix it."""


class ConfigError(MedclfError, ValueError):
    """A config file, a ``--set`` override or a command-line option is wrong."""


class DataError(MedclfError, ValueError):
    """A dataset, a CSV row or a split file is wrong."""


class BadImageError(DataError):
    """One image cannot be used (unreadable, truncated, too large, unsupported)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WriteError(MedclfError, OSError):
    """A file or folder cannot be written (disk full, read-only, no permission).

    Also an ``OSError``, so code that tolerates a failed optional write (a cache) still catches it.
    """
