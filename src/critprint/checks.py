"""Small input checks shared by the public functions.

Each check raises :class:`~critprint.errors.InvalidInputError` with a message
that shows the expected and the actual value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch

from critprint.errors import InvalidInputError

__all__ = ["check_choice", "check_positive", "check_image_batch", "check_range"]

T = TypeVar("T")


def check_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    options = list(choices)
    if value not in options:
        listed = ", ".join(repr(option) for option in options)
        raise InvalidInputError(f"invalid {name} {value!r}: expected one of {listed}")
    return value


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is positive (or zero when allowed), else raise."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"invalid {name} {value!r}: expected a number {bound}")
    return value


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Return ``value`` if ``low < value < high``, else raise."""
    if not low < value < high:
        raise InvalidInputError(f"invalid {name} {value!r}: expected a number in ({low}, {high})")
    return value


def check_image_batch(name: str, image: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Return ``image`` if it is a floating (B, C, H, W) tensor, else raise.

    Args:
        name: The argument name shown in the message.
        image: The tensor to check.
        channels: The required C, or None for any.
    """
    if not isinstance(image, torch.Tensor):
        raise InvalidInputError(f"invalid {name}: expected a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4:
        raise InvalidInputError(f"invalid {name}: expected shape (B, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InvalidInputError(f"invalid {name}: expected a floating dtype, got {image.dtype}")
    if channels is not None and image.shape[1] != channels:
        raise InvalidInputError(f"invalid {name}: expected {channels} channels, got {image.shape[1]}")
    return image
