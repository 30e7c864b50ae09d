"""Differentiable degradations D_T, one per restoration task.

Each degradation maps a batch of clean images to the input its task's model
expects. The Gaussian noise of each step is passed in as a tensor, drawn by the
caller from one seeded generator; fixed random parts (a rain layer, the draws
of a custom degradation) come from generators derived from the protocol's seed
(:func:`critprint.protocol.seeded_generator`). So the degradation itself is
deterministic and a suspect is probed with exactly the source's draws.

Every degradation ends with ``+ N``: the noise, when the protocol's
``noise_sigma`` is above 0, is added to the degraded image.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from critprint.checks import check_choice, check_image_batch
from critprint.errors import InvalidInputError
from critprint.protocol import CUSTOM_SPEC, TASKS, Protocol, seeded_generator
from critprint.userimport import import_callable

__all__ = [
    "CustomDegradation",
    "Degradation",
    "DEGRADATIONS",
    "LOWLIGHT_EPSILON",
    "blur_kernel",
    "degrade_custom",
    "degrade_deblur",
    "degrade_denoise",
    "degrade_derain",
    "degrade_jpeg",
    "degrade_lowlight",
    "degrade_sr",
    "gaussian_kernel",
    "get_degradation",
    "jpeg_tables",
    "load_custom_degradation",
    "motion_kernel",
    "rain_layer",
    "total_variation",
]

logger = logging.getLogger(__name__)

CustomDegradation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""A user's degradation: ``function(image, generator) -> degraded image``."""

LOWLIGHT_EPSILON = 1e-6
"""Added to max - min in the low-light normalisation, so a flat image gives 0, not NaN."""

# Stream numbers of seeded_generator. Stream 2, the motion angle, is drawn in critprint.protocol.
_RAIN_STREAM = 1
_CUSTOM_STREAM = 3


def _add_noise(image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    if noise is None:
        return image
    if noise.shape != image.shape:
        raise InvalidInputError(f"invalid noise: expected shape {tuple(image.shape)}, got {tuple(noise.shape)}")
    return image + noise


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
    return _add_noise(image, noise)


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
    return _add_noise(low, noise)


# ---------------------------------------------------------------- deblurring


def gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """Return a normalised isotropic Gaussian kernel, float64 (size, size).

    Args:
        sigma: Standard deviation in pixels (> 0).
        size: Odd side of the kernel.
    """
    if not sigma > 0:
        raise InvalidInputError(f"invalid blur_sigma {sigma!r}: expected a number > 0")
    if size < 1 or size % 2 == 0:
        raise InvalidInputError(f"invalid blur_size {size!r}: expected an odd integer >= 1")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


def _line(length: int, angle: float) -> torch.Tensor:
    """Return an anti-aliased line through the centre of an odd square, float64.

    The line is ``length`` pixels long at ``angle`` degrees counter-clockwise
    from the horizontal. It is sampled at 4 points per pixel, and each sample
    is spread over its four nearest pixels with bilinear weights. The side is
    the smallest odd number >= ``length``. The result is not normalised.
    """
    if length < 1:
        raise InvalidInputError(f"invalid line length {length!r}: expected an integer >= 1")
    size = length if length % 2 else length + 1
    centre = (size - 1) / 2
    radians = math.radians(angle)
    steps = torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length + 1, dtype=torch.float64)
    columns = centre + steps * math.cos(radians)
    rows = centre - steps * math.sin(radians)  # image rows grow downwards
    kernel = torch.zeros(size, size, dtype=torch.float64)
    row0, column0 = rows.floor(), columns.floor()
    row_weight, column_weight = rows - row0, columns - column0
    for row_offset, row_factor in ((0, 1 - row_weight), (1, row_weight)):
        for column_offset, column_factor in ((0, 1 - column_weight), (1, column_weight)):
            row_index = (row0 + row_offset).long().clamp(0, size - 1)
            column_index = (column0 + column_offset).long().clamp(0, size - 1)
            kernel.index_put_((row_index, column_index), row_factor * column_factor, accumulate=True)
    return kernel


def motion_kernel(length: int, angle: float) -> torch.Tensor:
    """Return a normalised linear motion kernel, float64, odd side >= ``length``.

    Args:
        length: Length of the motion in pixels (>= 1).
        angle: Direction in degrees, counter-clockwise from the horizontal.
    """
    if length < 1:
        raise InvalidInputError(f"invalid motion_length {length!r}: expected an integer >= 1")
    kernel = _line(length, angle)
    return kernel / kernel.sum()


def blur_kernel(protocol: Protocol) -> torch.Tensor:
    """Return the deblurring kernel a protocol describes, float64 (k, k).

    A motion kernel whose angle is None takes the angle drawn from the seed
    (:meth:`critprint.protocol.Protocol.resolved`).
    """
    if protocol.blur_kernel == "gaussian":
        return gaussian_kernel(protocol.blur_sigma, protocol.blur_size)
    angle = protocol.resolved().motion_angle
    assert angle is not None  # resolved() draws it
    return motion_kernel(protocol.motion_length, angle)


def _convolve_same(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel with one (k, k) kernel; output size = input size.

    The image is padded by reflection, or by replication where it is too
    small to reflect, so no dark border enters the blur.
    """
    channels = image.shape[1]
    pad = kernel.shape[-1] // 2
    height, width = image.shape[-2:]
    if pad:
        mode = "reflect" if pad < height and pad < width else "replicate"
        image = F.pad(image, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(image).flip(-2, -1).expand(channels, 1, *kernel.shape)
    return F.conv2d(image, weight, groups=channels)


def degrade_deblur(image: torch.Tensor, kernel: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Blur for the deblurring task: D(X) = K * X + N.

    Args:
        image: Sharp images, shape (B, C, H, W), floating dtype.
        kernel: Blur kernel of odd side k, shape (k, k); see
            :func:`gaussian_kernel` and :func:`motion_kernel`.
        noise: Noise of the image's shape, already scaled by sigma, or None.

    Returns:
        The blurred images, shape (B, C, H, W): a true convolution (the kernel
        flipped) over the reflect-padded image.
    """
    check_image_batch("image", image)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise InvalidInputError(f"invalid kernel: expected an odd square (k, k) tensor, got {tuple(kernel.shape)}")
    return _add_noise(_convolve_same(image, kernel), noise)


# ------------------------------------------------------------------ low light


def degrade_lowlight(image: torch.Tensor, gamma: float = 3.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Darken for the low-light task: D(X) = Norm(X^g) + N.

    X^g keeps the sign (sign(X) |X|^g), so an unconstrained image with
    negative values has a gradient everywhere. Norm maps each image of the
    batch to [0, 1] by its own minimum and maximum over all channels and
    pixels: (Y - min) / (max - min + :data:`LOWLIGHT_EPSILON`).

    Args:
        image: Images, shape (B, C, H, W), floating dtype.
        gamma: Exponent g (> 0); 3 by default.
        noise: Noise of the image's shape, already scaled by sigma, or None.
    """
    check_image_batch("image", image)
    if not gamma > 0:
        raise InvalidInputError(f"invalid lowlight_gamma {gamma!r}: expected a number > 0")
    powered = image.pow(3) if gamma == 3 else image.sign() * image.abs().pow(gamma)
    flat = powered.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    high = flat.amax(dim=1).view(-1, 1, 1, 1)
    return _add_noise((powered - low) / (high - low + LOWLIGHT_EPSILON), noise)


# ---------------------------------------------------------------------- rain


@functools.lru_cache(maxsize=16)
def _cached_rain_layer(
    height: int, width: int, density: float, length: int, angle: float, intensity: float, seed: int
) -> torch.Tensor:
    streak = _line(length, angle)
    streak = streak / streak.max()
    pad = streak.shape[-1] // 2
    generator = seeded_generator(seed, _RAIN_STREAM)
    # Streak starts are drawn on a margin around the image too, so streaks
    # cross the border instead of stopping short of it.
    starts = torch.rand(1, 1, height + 2 * pad, width + 2 * pad, generator=generator, dtype=torch.float64)
    impulses = (starts < density).to(torch.float64)
    streaks = F.conv2d(impulses, streak.flip(-2, -1)[None, None])
    layer = intensity * streaks.clamp(max=1.0)
    return layer


def rain_layer(protocol: Protocol, height: int, width: int) -> torch.Tensor:
    """Return the rain-streak layer R of a protocol, float64 (1, 1, H, W).

    Streaks start at the pixels where a uniform draw falls below
    ``rain_density``; each is a ``rain_length``-pixel anti-aliased line at
    ``rain_angle`` degrees, scaled to a peak of ``rain_intensity``; where
    streaks overlap, R is capped at ``rain_intensity``. The draws come from
    the protocol's seed, so source and suspect see the same layer. The result
    is cached: treat it as read-only.
    """
    return _cached_rain_layer(
        height, width, protocol.rain_density, protocol.rain_length, protocol.rain_angle,
        protocol.rain_intensity, protocol.seed,
    )


def degrade_derain(image: torch.Tensor, rain: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Add rain for the deraining task: D(X) = X + R + N.

    Args:
        image: Clean images, shape (B, C, H, W), floating dtype.
        rain: Rain layer broadcastable to the image, e.g. (1, 1, H, W) from
            :func:`rain_layer`; the same streaks fall on every channel.
        noise: Noise of the image's shape, already scaled by sigma, or None.

    Returns:
        The rainy images, not clamped, so the gradient reaches every pixel.
    """
    check_image_batch("image", image)
    if rain.ndim != 4 or rain.shape[-2:] != image.shape[-2:]:
        raise InvalidInputError(
            f"invalid rain layer: expected shape (1, 1, {image.shape[-2]}, {image.shape[-1]}), got {tuple(rain.shape)}"
        )
    return _add_noise(image + rain.to(image), noise)


# ---------------------------------------------------------------------- JPEG

# Tables K.1 and K.2 of ITU-T T.81 (JPEG), the IJG base tables at quality 50.
_LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)

# JFIF RGB -> YCbCr on the 0..255 scale, without the +128 offset of Cb and Cr.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


def jpeg_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (luminance, chrominance) quantisation tables for a quality.

    The standard tables are scaled as the IJG library does, by 5000 / q
    below quality 50 and by 200 - 2 q from 50. Each entry becomes
    floor((base * scale + 50) / 100), kept in [1, 255]. Float64, (8, 8) each.

    Example:
        >>> int(jpeg_tables(50)[0][0, 0]), int(jpeg_tables(10)[0][0, 0]), int(jpeg_tables(100)[0][0, 0])
        (16, 80, 1)
    """
    if not 1 <= quality <= 100:
        raise InvalidInputError(f"invalid jpeg_quality {quality!r}: expected an integer in [1, 100]")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMINANCE_TABLE, _CHROMINANCE_TABLE):
        values = torch.tensor(base, dtype=torch.float64)
        tables.append(torch.floor((values * scale + 50) / 100).clamp(1, 255))
    return tables[0], tables[1]


@functools.lru_cache(maxsize=1)
def _dct_matrix() -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix; D @ B @ D.T is JPEG's forward DCT of a block B."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix


def _soft_round(values: torch.Tensor) -> torch.Tensor:
    """Round with the cubic approximation r + (x - r)^3 (Shin and Song, 2017).

    Its value is within 0.125 of round(x), and its derivative 3 (x - r)^2 is
    the true derivative away from the half-integers where round jumps.
    """
    rounded = torch.round(values)
    return rounded + (values - rounded).pow(3)


def degrade_jpeg(image: torch.Tensor, quality: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Compress for JPEG artefact removal, differentiably: D(X) = JPEG_q(X) + N.

    RGB images go to JFIF YCbCr (gray images stay one channel), every 8 x 8
    block of each channel is transformed by the DCT, divided by the
    luminance table (Y, gray) or the chrominance table (Cb, Cr) of
    :func:`jpeg_tables`, rounded by :func:`_soft_round`, multiplied back and
    inverse transformed. There is no chroma subsampling (4:4:4) and no
    clamping to [0, 255], so the gradient reaches every pixel. Sides that are
    not multiples of 8 are padded by replication and cropped back.

    Args:
        image: Images in [0, 1], shape (B, C, H, W), C = 1 or 3.
        quality: IJG quality, 1 to 100.
        noise: Noise of the image's shape, already scaled by sigma, or None.
    """
    check_image_batch("image", image)
    channels = image.shape[1]
    if channels not in (1, 3):
        raise InvalidInputError(f"invalid image: JPEG needs 1 or 3 channels, got {channels}")
    luminance, chrominance = (table.to(image) for table in jpeg_tables(quality))
    height, width = image.shape[-2:]
    pad_bottom, pad_right = -height % 8, -width % 8
    values = image * 255.0
    if pad_bottom or pad_right:
        values = F.pad(values, (0, pad_right, 0, pad_bottom), mode="replicate")
    if channels == 3:
        to_ycbcr = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64).to(image)
        values = torch.einsum("ij,bjhw->bihw", to_ycbcr, values - 128.0)
        tables = torch.stack([luminance, chrominance, chrominance])
    else:
        values = values - 128.0
        tables = luminance[None]
    batch, _, padded_height, padded_width = values.shape
    blocks = values.view(batch, channels, padded_height // 8, 8, padded_width // 8, 8).transpose(3, 4)
    dct = _dct_matrix().to(image)
    coefficients = dct @ blocks @ dct.T
    steps = tables[None, :, None, None]
    quantised = _soft_round(coefficients / steps) * steps
    restored = (dct.T @ quantised @ dct).transpose(3, 4).reshape(batch, channels, padded_height, padded_width)
    if channels == 3:
        restored = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_ycbcr), restored)
    restored = (restored + 128.0) / 255.0
    return _add_noise(restored[..., :height, :width], noise)


# -------------------------------------------------------------------- custom


def load_custom_degradation(spec: str) -> CustomDegradation:
    """Import a user's degradation named ``package.module:function``.

    This imports the module, which runs its code: name only modules you trust.

    Raises:
        InvalidInputError: If the name is malformed, the module cannot be
            imported, or the attribute is missing or not callable.
    """
    if not isinstance(spec, str) or not CUSTOM_SPEC.match(spec):
        raise InvalidInputError(
            f"invalid custom_degradation {spec!r}: expected 'package.module:function' naming your degradation"
        )
    module_name, attribute = spec.split(":")
    target = import_callable(
        module_name, attribute, f"custom_degradation {spec!r}", InvalidInputError,
        "function(image, generator) -> tensor",
    )
    return target  # type: ignore[return-value]


def degrade_custom(
    image: torch.Tensor,
    function: CustomDegradation,
    generator: torch.Generator,
    scale: int = 1,
    noise: torch.Tensor | None = None,
    name: str = "custom degradation",
) -> torch.Tensor:
    """Apply a user's degradation: D(X) = f(X, g) + N.

    Args:
        image: Images, shape (B, C, H, W), floating dtype.
        function: ``function(image, generator)``, differentiable in ``image``,
            returning shape (B, C, H / scale, W / scale) in the image's dtype.
        generator: The generator ``function`` must draw its random numbers
            from.
        scale: The model's scale; the function downsamples by it.
        noise: Noise of the output's shape, already scaled by sigma, or None.
        name: How messages name the function.

    Raises:
        InvalidInputError: If the function raises, returns something other
            than a floating tensor of the expected shape, or cuts the
            gradient.
    """
    check_image_batch("image", image)
    batch, channels, height, width = image.shape
    expected = (batch, channels, height // scale, width // scale)
    try:
        output = function(image, generator)
    except Exception as error:  # noqa: BLE001 - user code may raise anything
        raise InvalidInputError(f"{name} raised {type(error).__name__}: {error}; fix the function") from error
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        kind = f"a {output.dtype} tensor" if isinstance(output, torch.Tensor) else type(output).__name__
        raise InvalidInputError(f"{name} returned {kind}; expected a floating tensor of shape {expected}")
    if tuple(output.shape) != expected:
        raise InvalidInputError(
            f"{name} returned shape {tuple(output.shape)} for an input of shape {tuple(image.shape)}; "
            f"expected {expected}"
        )
    if image.requires_grad and not output.requires_grad:
        raise InvalidInputError(
            f"{name} returned a tensor without a gradient path to its input; use differentiable torch operations"
        )
    return _add_noise(output.to(image.dtype), noise)


def _apply_custom(image: torch.Tensor, protocol: Protocol, noise: torch.Tensor | None) -> torch.Tensor:
    # NOTE: verifying against a fingerprint imports the module it names, so a
    # fingerprint file from elsewhere chooses which installed module is imported.
    function = load_custom_degradation(protocol.custom_degradation)
    # A new generator at every call: the function's draws are the same at
    # every step, so it degrades with one fixed random setting per seed.
    generator = seeded_generator(protocol.seed, _CUSTOM_STREAM)
    return degrade_custom(image, function, generator, protocol.scale, noise, name=protocol.custom_degradation)


# ---------------------------------------------------------------------------


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


def _same_shape(shape: tuple[int, ...], _protocol: Protocol) -> tuple[int, ...]:
    return tuple(shape)


def _low_resolution_shape(shape: tuple[int, ...], protocol: Protocol) -> tuple[int, ...]:
    return (*shape[:-2], shape[-2] // protocol.scale, shape[-1] // protocol.scale)


def _apply_derain(image: torch.Tensor, protocol: Protocol, noise: torch.Tensor | None) -> torch.Tensor:
    return degrade_derain(image, rain_layer(protocol, image.shape[-2], image.shape[-1]), noise)


DEGRADATIONS: dict[str, Degradation] = {
    "denoise": Degradation(
        task="denoise",
        apply=lambda image, _protocol, noise: degrade_denoise(image, noise),
        noise_shape=_same_shape,
    ),
    "sr": Degradation(
        task="sr",
        apply=lambda image, protocol, noise: degrade_sr(image, protocol.scale, noise),
        noise_shape=_low_resolution_shape,
    ),
    "deblur": Degradation(
        task="deblur",
        apply=lambda image, protocol, noise: degrade_deblur(image, blur_kernel(protocol), noise),
        noise_shape=_same_shape,
    ),
    "lowlight": Degradation(
        task="lowlight",
        apply=lambda image, protocol, noise: degrade_lowlight(image, protocol.lowlight_gamma, noise),
        noise_shape=_same_shape,
    ),
    "derain": Degradation(task="derain", apply=_apply_derain, noise_shape=_same_shape),
    "jpeg": Degradation(
        task="jpeg",
        apply=lambda image, protocol, noise: degrade_jpeg(image, protocol.jpeg_quality, noise),
        noise_shape=_same_shape,
    ),
    "custom": Degradation(task="custom", apply=_apply_custom, noise_shape=_low_resolution_shape),
}


def get_degradation(task: str) -> Degradation:
    """Return the degradation of a task (one of :data:`critprint.protocol.TASKS`)."""
    check_choice("task", task, TASKS)
    return DEGRADATIONS[task]
