"""Classifier heads that turn a restoration model's output image into logits.

The paper's two baselines ("Fingerprinting Deep Image Restoration Models",
Quan et al., ICCV 2023, section "Baselines") make a classifier out of an
image-restoration model so that IPGuard, a fingerprint for classifiers, can
be applied:

* ``"projection"`` (ProjCL): a fixed random linear projection of the
  flattened output to ``classes`` logits. Its weights are drawn from
  N(0, 1 / D), D being the output's number of values per image, by a
  ``torch.Generator`` seeded from the seed alone, so the matrix depends only
  on the seed and the output shape.
* ``"pool"`` (PoolCL): the output averaged over channels, adaptive-average
  pooled to k x k with k * k = ``classes`` (10 x 10 for 100 classes) and
  flattened.

Both heads adapt to the output size, so they serve denoisers and
super-resolution models alike. Softmax is left out: it does not change the
argmax label.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from critprint.errors import IncompatibleModelError

__all__ = ["HEADS", "BASELINE_NAMES", "derived_seed", "projection_weights", "pool_side", "make_head"]

HEADS: tuple[str, ...] = ("projection", "pool")
"""The accepted head names."""

BASELINE_NAMES: dict[str, str] = {"projection": "ProjCL", "pool": "PoolCL"}
"""The paper's name of the baseline each head gives."""

Head = Callable[[torch.Tensor], torch.Tensor]
"""Maps a (B, C, H, W) model output to (B, classes) logits."""


def derived_seed(seed: int, purpose: str) -> int:
    """Return a 63-bit seed for one purpose, derived from a user seed.

    Separate purposes (the projection matrix, the starting points) get
    unrelated random streams from the same user seed. The derivation uses
    SHA-256, so it is the same on every platform and Python version.

    Example:
        >>> derived_seed(0, "projection") == derived_seed(0, "projection")
        True
        >>> derived_seed(0, "projection") == derived_seed(0, "points")
        False
    """
    digest = hashlib.sha256(f"critprint.ipguard.{purpose}.{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def projection_weights(seed: int, features: int, classes: int) -> torch.Tensor:
    """Return the ProjCL projection matrix, (classes, features) float32 on the CPU.

    Entries are drawn from N(0, 1 / features), so a logit has about the
    variance of one output value.

    Example:
        >>> weights = projection_weights(0, 12, 4)
        >>> weights.shape, bool(torch.equal(weights, projection_weights(0, 12, 4)))
        (torch.Size([4, 12]), True)
    """
    generator = torch.Generator().manual_seed(derived_seed(seed, "projection"))
    weights = torch.randn((classes, features), generator=generator, dtype=torch.float32)
    return weights / math.sqrt(features)


def pool_side(classes: int) -> int | None:
    """Return k with k * k = ``classes``, or None when ``classes`` is not a square.

    Example:
        >>> pool_side(100), pool_side(99)
        (10, None)
    """
    side = math.isqrt(classes) if classes > 0 else 0
    return side if side > 0 and side * side == classes else None


def make_head(head: str, classes: int, seed: int) -> Head:
    """Return the head function for settings ``head``, ``classes`` and ``seed``.

    The projection head draws its matrix on the first call of each output
    size and reuses it afterwards, so a boundary search draws it once.

    Raises:
        ValueError: If ``head`` is unknown or ``classes`` does not suit it;
            callers validate settings first, so this signals a programming
            error.
    """
    if head == "projection":
        cache: dict[tuple[int, torch.device], torch.Tensor] = {}

        def project(output: torch.Tensor) -> torch.Tensor:
            flat = _check_output(output).flatten(1).to(torch.float32)
            key = (flat.shape[1], flat.device)
            if key not in cache:
                cache[key] = projection_weights(seed, flat.shape[1], classes).to(flat.device)
            return flat @ cache[key].T

        return project
    if head == "pool":
        side = pool_side(classes)
        if side is None:
            raise ValueError(f"pool head needs a square number of classes, got {classes}")

        def pool(output: torch.Tensor) -> torch.Tensor:
            gray = _check_output(output).to(torch.float32).mean(dim=1, keepdim=True)
            return F.adaptive_avg_pool2d(gray, side).flatten(1)

        return pool
    raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")


def _check_output(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise IncompatibleModelError(
            f"model output has shape {shape}, expected (B, C, H, W); "
            "the IPGuard baselines need an image-to-image model"
        )
    return output
