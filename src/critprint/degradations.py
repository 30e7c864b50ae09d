"""Differentiable degradations D_T, one per restoration task.

Each degradation maps a batch of clean images to the input its task's model
expects. Random parts (noise) are passed in as tensors, drawn by the caller
from one seeded generator, so the degradation itself is deterministic and a
suspect can be probed with exactly the source's draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from critprint.checks import check_choice, check_image_batch
from critprint.errors import InvalidInputError
from critprint.protocol import TASKS, Protocol

__all__ = [
    "Degradation",
    "DEGRADATIONS",
    "degrade_denoise",
    "degrade_sr",
    "get_degradation",
    "total_variation",
]


def degrade_denoise(image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Add noise for the denoising task: D(X) = X + N.

    Args:
        image: Clean images, shape (B, C, H, W), any range, floating dtype.
        noise: Noise of the same shape, already scaled by sigma, or None for
            no noise.

    Returns:
        The noisy images, shape (B, C, H, W), same dtype and device.
    """
    check_image_batch("image", image)
    if noise is None:
        return image
    if noise.shape != image.shape:
        raise InvalidInputError(f"invalid noise: expected shape {tuple(image.shape)}, got {tuple(noise.shape)}")
    return image + noise


def degrade_sr(image: torch.Tensor, scale: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Downsample for super-resolution: D(X) = avgpool_s(X) + N.

    Average pooling with kernel = stride = scale follows the authors' published
    script for "Fingerprinting Deep Image Restoration Models".

    Args:
        image: High-resolution images, shape (B, C, H, W) with H and W
            multiples of ``scale``; floating dtype.
        scale: Downsampling factor (>= 1).
        noise: Noise of shape (B, C, H / scale, W / scale), already scaled by
            sigma, or None.

    Returns:
        The low-resolution images, shape (B, C, H / scale, W / scale).
    """
    check_image_batch("image", image)
    if scale < 1:
        raise InvalidInputError(f"invalid scale {scale!r}: expected an integer >= 1")
    height, width = image.shape[-2:]
    if height % scale or width % scale:
        raise InvalidInputError(f"invalid image size {height} x {width}: expected multiples of the scale {scale}")
    low = F.avg_pool2d(image, kernel_size=scale, stride=scale) if scale > 1 else image
    if noise is None:
        return low
    if noise.shape != low.shape:
        raise InvalidInputError(f"invalid noise: expected shape {tuple(low.shape)}, got {tuple(noise.shape)}")
    return low + noise


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Return the anisotropic total variation of a (B, C, H, W) batch.

    The sum over the batch of the absolute horizontal and vertical forward
    differences, as a 0-dim tensor with the input's dtype and device.
    """
    check_image_batch("image", image)
    vertical = (image[..., 1:, :] - image[..., :-1, :]).abs().sum()
    horizontal = (image[..., :, 1:] - image[..., :, :-1]).abs().sum()
    return vertical + horizontal


@dataclass(frozen=True)
class Degradation:
    """A task's degradation and the shape of the noise it consumes.

    Attributes:
        task: The task name.
        apply: ``apply(image, protocol, noise)`` returns the model input.
        noise_shape: ``noise_shape(image_shape, protocol)`` returns the shape
            of the noise tensor for one call.
    """

    task: str
    apply: Callable[[torch.Tensor, Protocol, torch.Tensor | None], torch.Tensor]
    noise_shape: Callable[[tuple[int, ...], Protocol], tuple[int, ...]]


def _low_resolution_shape(shape: tuple[int, ...], protocol: Protocol) -> tuple[int, ...]:
    return (*shape[:-2], shape[-2] // protocol.scale, shape[-1] // protocol.scale)


DEGRADATIONS: dict[str, Degradation] = {
    "denoise": Degradation(
        task="denoise",
        apply=lambda image, _protocol, noise: degrade_denoise(image, noise),
        noise_shape=lambda shape, _protocol: tuple(shape),
    ),
    "sr": Degradation(
        task="sr",
        apply=lambda image, protocol, noise: degrade_sr(image, protocol.scale, noise),
        noise_shape=_low_resolution_shape,
    ),
}


def get_degradation(task: str) -> Degradation:
    """Return the degradation of a task (one of ``"denoise"``, ``"sr"``)."""
    check_choice("task", task, TASKS)
    return DEGRADATIONS[task]
