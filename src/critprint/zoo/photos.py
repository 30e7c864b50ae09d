"""Load the RGB photos bundled with scikit-image as float tensors.

Only images stored inside the scikit-image wheel are used, so loading never
touches the network. The zoo models train on ``TRAIN_PHOTOS`` (each model on a
subset) and are scored on ``HELDOUT_PHOTOS``, which no zoo model has seen.
"""

from __future__ import annotations

import functools
import logging
from typing import Final

import numpy as np
import skimage.data
import torch

logger = logging.getLogger(__name__)

PHOTO_NAMES: Final[tuple[str, ...]] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
"""Names of the scikit-image RGB photos that ship inside the wheel."""

HELDOUT_PHOTOS: Final[tuple[str, ...]] = ("chelsea", "coffee")
"""Photos excluded from the training of every zoo model."""

TRAIN_PHOTOS: Final[tuple[str, ...]] = tuple(
    name for name in PHOTO_NAMES if name not in HELDOUT_PHOTOS
)
"""Photos that zoo models may train on."""


@functools.lru_cache(maxsize=len(PHOTO_NAMES))
def _load_photo_array(name: str) -> np.ndarray:
    """Read one photo as a read-only uint8 array of shape (H, W, 3)."""
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):
        # stereo_motorcycle returns (left, right, disparity), so keep the left view.
        image = image[0]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"skimage.data.{name}() returned shape {image.shape} and dtype "
            f"{image.dtype}, expected an (H, W, 3) uint8 RGB image"
        )
    image.setflags(write=False)
    logger.debug("Loaded photo %s with shape %s", name, image.shape)
    return image


def load_photo(name: str) -> torch.Tensor:
    """Load a bundled photo as a float32 tensor of shape (3, H, W) in [0, 1].

    Raises ``ValueError`` if ``name`` is not in ``PHOTO_NAMES``. Each call
    returns a new tensor, so callers may modify it in place.
    """
    if name not in PHOTO_NAMES:
        raise ValueError(
            f"Unknown photo {name!r}. Expected one of: {', '.join(PHOTO_NAMES)}"
        )
    array = _load_photo_array(name)
    tensor = torch.from_numpy(array.astype(np.float32) / 255.0)
    return tensor.permute(2, 0, 1).contiguous()


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop the bottom and right edges of (..., H, W) so H and W divide by ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    height = image.shape[-2] - image.shape[-2] % multiple
    width = image.shape[-1] - image.shape[-1] % multiple
    return image[..., :height, :width]
