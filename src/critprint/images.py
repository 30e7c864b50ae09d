"""Write critical images as PNG pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from critprint.errors import InvalidInputError
from critprint.fingerprint import atomic_write_bytes

__all__ = ["to_uint8", "write_png"]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Convert a (C, H, W) image in [0, 1] (clamped) to an (H, W, C) or (H, W) uint8 array."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise InvalidInputError(f"invalid image: expected shape (C, H, W) with C in {{1, 3}}, got {tuple(image.shape)}")
    values = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    array = values.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write a (C, H, W) image in [0, 1] as a PNG file, atomically.

    Args:
        image: The picture; values outside [0, 1] are clamped.
        path: Target file; its folder is created.
        scale: Integer enlargement with nearest-neighbour sampling, so small
            critical images stay readable.
    """
    if scale < 1:
        raise InvalidInputError(f"invalid scale {scale!r}: expected an integer >= 1")
    picture = Image.fromarray(to_uint8(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue())
    return target
