"""Exception types raised by critprint.

Every error a user can cause is a subclass of :class:`CritprintError`, so the
command-line interface can turn it into a one-line message. The subclasses also
derive from the matching built-in type (``ValueError``, ``FileNotFoundError``,
...) so library callers can catch them the usual way.
"""

from __future__ import annotations

__all__ = [
    "CritprintError",
    "InvalidInputError",
    "ModelLoadError",
    "IncompatibleModelError",
    "FingerprintFormatError",
    "RegistryError",
    "DuplicateNameError",
    "NameNotFoundError",
]


class CritprintError(Exception):
    """Base class of every error that critprint reports to a user."""


class InvalidInputError(CritprintError, ValueError):
    """An argument has a value outside its documented domain."""


class ModelLoadError(CritprintError, ValueError):
    """A model file is missing, unreadable or of an unknown architecture."""


class IncompatibleModelError(CritprintError, ValueError):
    """A model does not fit the task, scale or channels a fingerprint needs."""


class FingerprintFormatError(CritprintError, ValueError):
    """A fingerprint file is corrupt, truncated or of an unknown format."""


class RegistryError(CritprintError, RuntimeError):
    """The fingerprint registry cannot be opened or written."""


class DuplicateNameError(RegistryError):
    """A fingerprint with this name is already registered."""


class NameNotFoundError(RegistryError, KeyError):
    """No fingerprint with this name is registered."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a user-facing message must read plainly.
        return str(self.args[0]) if self.args else ""
