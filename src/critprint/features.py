"""Colour and local gradient pattern (LGP) histograms of a critical image.

All functions are pure and work on CPU tensors in float64, so the same image
gives bit-identical features on any machine with the same library versions.

The feature vector h of an image with C channels is the concatenation of a
colour histogram (``colour_bins`` bins per channel, C * colour_bins values that
sum to 1) and a rotation-invariant uniform LGP histogram (P + 2 values that sum
to 1), so its length is L = C * colour_bins + P + 2: 30 for RGB with the
defaults (4 bins, P = 16).
"""

from __future__ import annotations

import math

import torch

from critprint.checks import check_positive
from critprint.errors import InvalidInputError
from critprint.protocol import FeatureSettings

__all__ = [
    "colour_histogram",
    "to_gray",
    "lgp_codes",
    "lgp_histogram",
    "quantize_8bit",
    "feature_vector",
]

# ITU-R BT.709 luma weights, the ones scikit-image's rgb2gray uses.
_LUMA = (0.2125, 0.7154, 0.0721)

# Gradients closer to their mean than this count as equal to it.
_TIE_TOLERANCE = 1e-9


def _check_chw(image: torch.Tensor) -> None:
    if image.ndim != 3:
        raise InvalidInputError(f"invalid image: expected shape (C, H, W), got {tuple(image.shape)}")
    if image.shape[0] not in (1, 3):
        raise InvalidInputError(f"invalid image: expected 1 or 3 channels, got {image.shape[0]}")


def colour_histogram(image: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Compute the normalised per-channel colour histogram of an image.

    Args:
        image: Tensor of shape (C, H, W) with C in {1, 3}; values are clamped
            to [0, 1] first. Any floating dtype and device.
        bins: Number of equal-width bins per channel over [0, 1]; a value
            equal to 1 falls into the last bin.

    Returns:
        A float64 CPU tensor of shape (C * bins,), channel after channel, that
        sums to 1 over all channels.

    Example:
        >>> colour_histogram(torch.tensor([[[0.0, 0.3], [0.6, 1.0]]]), bins=4).tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    _check_chw(image)
    if bins < 1:
        raise InvalidInputError(f"invalid bins {bins!r}: expected an integer >= 1")
    values = image.detach().to("cpu", torch.float64).clamp(0.0, 1.0)
    index = (values * bins).floor().clamp(max=bins - 1).long()
    channels = values.shape[0]
    offsets = torch.arange(channels).view(channels, 1, 1) * bins
    counts = torch.bincount((index + offsets).flatten(), minlength=channels * bins)
    return counts.to(torch.float64) / counts.sum()


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """Convert a (C, H, W) image with C in {1, 3} to a float64 (H, W) gray image.

    RGB uses the ITU-R BT.709 luma weights; values are clamped to [0, 1] first.
    """
    _check_chw(image)
    values = image.detach().to("cpu", torch.float64).clamp(0.0, 1.0)
    if values.shape[0] == 1:
        return values[0]
    weights = torch.tensor(_LUMA, dtype=torch.float64).view(3, 1, 1)
    return (values * weights).sum(dim=0)


def _neighbour_offsets(points: int, radius: float) -> list[tuple[float, float]]:
    """Return (dy, dx) of P neighbours on a circle, counter-clockwise from the right."""
    offsets = []
    for p in range(points):
        angle = 2.0 * math.pi * p / points
        # Rounding removes the 1e-16 residues of sin and cos, so neighbours
        # that lie on the pixel grid are read exactly, not interpolated.
        offsets.append((round(-radius * math.sin(angle), 9), round(radius * math.cos(angle), 9)))
    return offsets


def _sample(gray: torch.Tensor, dy: float, dx: float, margin: int) -> torch.Tensor:
    """Bilinearly sample ``gray`` at (i + dy, j + dx) for every interior pixel (i, j)."""
    height, width = gray.shape
    rows = height - 2 * margin
    cols = width - 2 * margin
    y0 = math.floor(dy)
    x0 = math.floor(dx)
    wy = dy - y0
    wx = dx - x0

    def window(oy: int, ox: int) -> torch.Tensor:
        top = margin + oy
        left = margin + ox
        return gray[top : top + rows, left : left + cols]

    result = (1 - wy) * (1 - wx) * window(y0, x0)
    if wx > 0:
        result = result + (1 - wy) * wx * window(y0, x0 + 1)
    if wy > 0:
        result = result + wy * (1 - wx) * window(y0 + 1, x0)
    if wx > 0 and wy > 0:
        result = result + wy * wx * window(y0 + 1, x0 + 1)
    return result


def lgp_codes(gray: torch.Tensor, points: int = 16, radius: float = 2.0) -> torch.Tensor:
    """Compute rotation-invariant uniform local gradient pattern labels.

    LGP (Jun and Kim, 2012) compares each of the P circular neighbours g_p of a
    pixel with the centre g_c through the gradient d_p = |g_p - g_c|, and sets
    bit p when d_p >= mean(d). The bits are then encoded rotation-invariant and
    uniform (Ojala et al., 2002, "riu2"): a pattern with at most two 0/1
    transitions around the circle gets the number of set bits (0 to P), any
    other pattern gets P + 1. A flat neighbourhood (all d_p equal) sets every
    bit and gets label P. Neighbours off the pixel grid are interpolated
    bilinearly.

    Args:
        gray: Tensor of shape (H, W); any real dtype, read as float64.
        points: Number of neighbours P (>= 4).
        radius: Circle radius R in pixels.

    Returns:
        An int64 tensor of shape (H - 2m, W - 2m), m = ceil(R): labels of
        the pixels whose whole neighbourhood lies inside the image.

    Raises:
        InvalidInputError: If the image is not 2-D or smaller than 2m + 1.
    """
    if gray.ndim != 2:
        raise InvalidInputError(f"invalid gray image: expected shape (H, W), got {tuple(gray.shape)}")
    if points < 4:
        raise InvalidInputError(f"invalid points {points!r}: expected an integer >= 4")
    check_positive("radius", radius)
    margin = math.ceil(radius)
    if min(gray.shape) < 2 * margin + 1:
        raise InvalidInputError(
            f"invalid gray image: shape {tuple(gray.shape)} is smaller than {2 * margin + 1} x {2 * margin + 1}, "
            f"the minimum for radius {radius}"
        )
    values = gray.detach().to("cpu", torch.float64)
    height, width = values.shape
    centre = values[margin : height - margin, margin : width - margin]

    gradients = torch.stack(
        [(_sample(values, dy, dx, margin) - centre).abs() for dy, dx in _neighbour_offsets(points, radius)]
    )
    # Interpolating equal values can leave residues near 1e-17, which would
    # decide the bits of a flat neighbourhood at random. The tolerance treats
    # such residues as equal to the mean.
    threshold = gradients.mean(dim=0, keepdim=True) - _TIE_TOLERANCE
    bits = (gradients >= threshold).to(torch.int64)
    transitions = (bits - bits.roll(1, dims=0)).abs().sum(dim=0)
    ones = bits.sum(dim=0)
    return torch.where(transitions <= 2, ones, torch.full_like(ones, points + 1))


def lgp_histogram(gray: torch.Tensor, points: int = 16, radius: float = 2.0) -> torch.Tensor:
    """Compute the normalised histogram of :func:`lgp_codes`: float64, shape (P + 2,), sums to 1."""
    codes = lgp_codes(gray, points, radius)
    counts = torch.bincount(codes.flatten(), minlength=points + 2)
    return counts.to(torch.float64) / counts.sum()


def quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    """Round values in [0, 1] to the nearest of the 256 levels k / 255."""
    return (image * 255.0).round() / 255.0


def feature_vector(image: torch.Tensor, settings: FeatureSettings | None = None) -> torch.Tensor:
    """Compute the fingerprint feature vector h of a critical image.

    Args:
        image: Tensor of shape (C, H, W), C in {1, 3}; clamped to [0, 1],
            then rounded to 8-bit levels when ``settings.quantize`` is set,
            so the features are those of the exported PNG picture.
        settings: Histogram settings; the defaults give L = 30 for RGB.

    Returns:
        A float64 CPU tensor of shape (L,), L = C * colour_bins + P + 2: the
        colour histogram followed by the LGP histogram, each summing to 1.
    """
    settings = settings or FeatureSettings()
    _check_chw(image)
    values = image.detach().to("cpu", torch.float64).clamp(0.0, 1.0)
    if settings.quantize:
        values = quantize_8bit(values)
    colour = colour_histogram(values, settings.colour_bins)
    texture = lgp_histogram(to_gray(values), settings.lgp_points, settings.lgp_radius)
    return torch.cat([colour, texture])
