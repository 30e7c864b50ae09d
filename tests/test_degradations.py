"""Gradients and shapes of the degradations and the total variation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.autograd import gradcheck

from critprint.degradations import (
    blur_kernel,
    degrade_custom,
    degrade_deblur,
    degrade_denoise,
    degrade_derain,
    degrade_jpeg,
    degrade_lowlight,
    degrade_sr,
    gaussian_kernel,
    get_degradation,
    jpeg_tables,
    motion_kernel,
    rain_layer,
    total_variation,
)
from critprint.errors import InvalidInputError
from critprint.protocol import Protocol, get_protocol


def _random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gradcheck_denoise() -> None:
    image = _random(1, 3, 6, 6).requires_grad_(True)
    noise = _random(1, 3, 6, 6, seed=1)
    assert gradcheck(lambda x: degrade_denoise(x, noise), (image,))


@pytest.mark.parametrize("scale", [2, 4])
def test_gradcheck_sr(scale: int) -> None:
    image = _random(1, 3, 8, 8).requires_grad_(True)
    noise = _random(1, 3, 8 // scale, 8 // scale, seed=1)
    assert gradcheck(lambda x: degrade_sr(x, scale, noise), (image,))


def test_gradcheck_total_variation() -> None:
    # Random values have no two equal neighbours, where |.| has no gradient.
    image = _random(1, 3, 6, 6).requires_grad_(True)
    assert gradcheck(total_variation, (image,))


def test_total_variation_value() -> None:
    image = torch.tensor([[[[0.0, 1.0], [3.0, 3.0]]]])
    # Vertical |3-0| + |3-1| = 5, horizontal |1-0| + |3-3| = 1.
    assert total_variation(image).item() == 6.0


def test_sr_average_pools() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    assert degrade_sr(image, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_sr_rejects_indivisible_size() -> None:
    with pytest.raises(InvalidInputError, match="multiples of the scale 4"):
        degrade_sr(torch.zeros(1, 3, 10, 10), 4)


def test_denoise_rejects_wrong_noise_shape() -> None:
    with pytest.raises(InvalidInputError, match="invalid noise"):
        degrade_denoise(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(InvalidInputError, match="'denoise', 'sr'"):
        get_degradation("inpaint")


# ------------------------------------------------------------ the other tasks


def _protocol(task: str, **changes: object) -> Protocol:
    return get_protocol("quick", task, **changes).replace(size=24, iterations=20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kernel",
    [gaussian_kernel(1.6, 5), motion_kernel(5, 30.0), motion_kernel(4, 0.0)],
    ids=["gaussian", "motion-30", "motion-even"],
)
def test_gradcheck_deblur(kernel: torch.Tensor) -> None:
    image = _random(1, 3, 7, 7).requires_grad_(True)
    noise = _random(1, 3, 7, 7, seed=1)
    assert gradcheck(lambda x: degrade_deblur(x, kernel, noise), (image,))


def test_gradcheck_deblur_small_image() -> None:
    # A 9 px kernel on a 3 px image cannot reflect, so it replicates.
    image = _random(1, 1, 3, 3).requires_grad_(True)
    assert gradcheck(lambda x: degrade_deblur(x, gaussian_kernel(2.0, 9)), (image,))


@pytest.mark.parametrize("gamma", [3.0, 2.2])
def test_gradcheck_lowlight(gamma: float) -> None:
    image = (_random(2, 3, 5, 5) * 2 - 0.5).requires_grad_(True)
    assert gradcheck(lambda x: degrade_lowlight(x, gamma), (image,))


def test_gradcheck_derain() -> None:
    protocol = _protocol("derain")
    image = _random(1, 3, 6, 6).requires_grad_(True)
    rain = rain_layer(protocol, 6, 6)
    assert gradcheck(lambda x: degrade_derain(x, rain), (image,))


@pytest.mark.parametrize(("channels", "size"), [(3, 8), (1, 8), (3, 10)])
def test_gradcheck_jpeg(channels: int, size: int) -> None:
    image = _random(1, channels, size, size).requires_grad_(True)
    assert gradcheck(lambda x: degrade_jpeg(x, 50), (image,), atol=1e-5)


def test_gradcheck_custom() -> None:
    image = _random(1, 3, 6, 6).requires_grad_(True)
    # A fresh generator per call, as the extraction gives, so every evaluation draws alike.
    assert gradcheck(lambda x: degrade_custom(x, _darken, torch.Generator().manual_seed(0)), (image,))


def _darken(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return image * 0.5 + torch.rand((), generator=generator, dtype=image.dtype)


@pytest.mark.parametrize("task", ["denoise", "deblur", "lowlight", "derain", "jpeg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_degradation_shape_and_determinism(task: str, channels: int) -> None:
    protocol = _protocol(task)
    degradation = get_degradation(task)
    image = _random(1, channels, 24, 24)
    noise_shape = degradation.noise_shape(tuple(image.shape), protocol)
    noise = _random(*noise_shape, seed=3) * 0.01
    first = degradation.apply(image, protocol, noise)
    second = degradation.apply(image.clone(), protocol, noise.clone())
    assert first.shape == image.shape
    assert torch.equal(first, second)
    assert not torch.equal(first, image)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_sr_shapes_for_every_scale(scale: int) -> None:
    protocol = get_protocol("quick", "sr", scale=scale)
    image = torch.rand(1, 1, protocol.size, protocol.size)
    assert get_degradation("sr").apply(image, protocol, None).shape[-1] == protocol.input_size


def test_gaussian_and_motion_kernels_sum_to_one() -> None:
    assert torch.isclose(gaussian_kernel(1.6, 11).sum(), torch.tensor(1.0, dtype=torch.float64))
    kernel = motion_kernel(9, 45.0)
    assert kernel.shape == (9, 9)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    # A 9 px line at 45 degrees runs from (7, 1) up to (1, 7), clear of the other diagonal.
    assert kernel[7, 1] > 0
    assert kernel[1, 7] > 0
    assert kernel[1, 1] == 0
    assert kernel[0, 8] == 0


def test_deblur_keeps_a_constant_image() -> None:
    image = torch.full((1, 3, 12, 12), 0.3, dtype=torch.float64)
    assert torch.allclose(degrade_deblur(image, gaussian_kernel(1.6, 11)), image)


def test_motion_angle_drawn_and_recorded() -> None:
    protocol = _protocol("deblur", blur_kernel="motion")
    assert protocol.motion_angle is not None
    assert 0 <= protocol.motion_angle < 180
    assert protocol.replace(motion_angle=None).resolved() == protocol
    other = protocol.replace(seed=1, motion_angle=None).resolved()
    assert other.motion_angle != protocol.motion_angle
    assert torch.equal(blur_kernel(protocol), blur_kernel(protocol.replace(motion_angle=None)))


def test_lowlight_normalises_each_image() -> None:
    image = torch.stack([torch.linspace(0.2, 0.6, 16), torch.linspace(0.0, 1.0, 16)]).view(2, 1, 4, 4)
    degraded = degrade_lowlight(image)
    assert torch.allclose(degraded.flatten(1).amin(dim=1), torch.zeros(2))
    assert torch.allclose(degraded.flatten(1).amax(dim=1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(degrade_lowlight(torch.full((1, 3, 4, 4), 0.5))).all()


def test_rain_layer_seed_and_parameters() -> None:
    protocol = _protocol("derain")
    layer = rain_layer(protocol, 24, 24)
    assert layer.shape == (1, 1, 24, 24)
    assert 0 < float(layer.max()) <= protocol.rain_intensity
    assert torch.equal(layer, rain_layer(protocol.replace(name="other"), 24, 24))
    assert not torch.equal(layer, rain_layer(protocol.replace(seed=1), 24, 24))
    assert not torch.equal(layer, rain_layer(protocol.replace(rain_angle=10.0), 24, 24))
    assert float(rain_layer(protocol.replace(rain_density=0.0), 24, 24).abs().sum()) == 0


def test_jpeg_tables_ijg_scaling() -> None:
    luminance, chrominance = jpeg_tables(50)
    assert luminance[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert chrominance[7, 7] == 99
    assert jpeg_tables(10)[0][0, 0] == 80  # floor((16 * 500 + 50) / 100)
    assert jpeg_tables(100)[0].eq(1).all()


def test_jpeg_quality_100_near_identity() -> None:
    image = _random(1, 3, 16, 16)
    assert (degrade_jpeg(image, 100) - image).abs().max() < 2 / 255


def test_jpeg_error_grows_as_quality_falls() -> None:
    image = _random(1, 1, 16, 16)
    errors = [float((degrade_jpeg(image, quality) - image).abs().mean()) for quality in (95, 50, 5)]
    assert errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gaussian_kernel(0.0, 5), "invalid blur_sigma 0.0: expected a number > 0"),
        (lambda: gaussian_kernel(1.0, 4), "invalid blur_size 4: expected an odd integer"),
        (lambda: motion_kernel(0, 0.0), "invalid motion_length 0"),
        (lambda: degrade_lowlight(torch.zeros(1, 1, 4, 4), 0.0), "invalid lowlight_gamma 0.0"),
        (lambda: jpeg_tables(0), "invalid jpeg_quality 0: expected an integer in \\[1, 100\\]"),
        (lambda: degrade_jpeg(torch.zeros(1, 2, 8, 8), 50), "JPEG needs 1 or 3 channels, got 2"),
        (lambda: degrade_deblur(torch.zeros(1, 1, 8, 8), torch.ones(4, 4)), "invalid kernel"),
        (lambda: degrade_derain(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)), "invalid rain layer"),
    ],
)
def test_invalid_degradation_parameters(call: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
