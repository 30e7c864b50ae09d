"""Import a callable that a user names as ``package.module:attribute``.

Custom degradations and ``--arch`` architectures are user code: importing the
module runs it, so callers reach this only for names the user gave (or opted
in to, for a fingerprint made elsewhere).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from critprint.errors import CritprintError

__all__ = ["import_callable", "first_line"]


def first_line(error: BaseException) -> str:
    """Return the first line of an error message, or the error type when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def import_callable(
    module_name: str,
    attribute: str,
    label: str,
    error_type: type[CritprintError],
    expected: str,
) -> Callable[..., Any]:
    """Import ``module_name`` and return its dotted ``attribute``, which must be callable.

    Args:
        module_name: The module to import; its code runs.
        attribute: The attribute path inside it, such as ``Net`` or ``nets.build``.
        label: How error messages name the request, such as ``--arch pkg.mod:Net``.
        error_type: The exception class to raise.
        expected: What the callable should be, for the message of a wrong type.

    Raises:
        CritprintError: Of ``error_type``, when the module cannot be imported,
            the attribute is missing or it is not callable.
    """
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise error_type(
            f"failed to import module {module_name!r} of {label} ({first_line(error)}); "
            "put the folder that contains it on PYTHONPATH, or install its package"
        ) from None
    except Exception as error:  # noqa: BLE001 - importing user code can raise anything
        raise error_type(
            f"failed to import module {module_name!r} of {label}: it raised {type(error).__name__}: "
            f"{first_line(error)}; fix the module"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error_type(
                f"module {module_name!r} has no attribute {attribute!r} ({label}); check the name after ':'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise error_type(f"{label} names a {type(target).__name__}, not a callable; expected {expected}")
    return target
