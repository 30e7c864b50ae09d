"""Golden values for the colour and LGP histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from critprint.errors import InvalidInputError
from critprint.features import colour_histogram, feature_vector, lgp_codes, lgp_histogram, to_gray
from critprint.protocol import FeatureSettings

# Worked by hand with P = 4, R = 1 (neighbours right, up, left, down). For the
# centre 5: gradients |6-5|, |2-5|, |4-5|, |8-5| = 1, 3, 1, 3, mean 2, bits
# 0101, four transitions, so not uniform: label P + 1 = 5. For the centre 1:
# gradients 1, 1, 1, 3, mean 1.5, bits 0001, uniform with one bit set: label 1.
HAND_IMAGE = torch.tensor(
    [
        [0, 0, 0, 0, 0],
        [0, 1, 2, 3, 0],
        [0, 4, 5, 6, 0],
        [0, 7, 8, 9, 0],
        [0, 0, 0, 0, 0],
    ],
    dtype=torch.float64,
)
HAND_CODES = [[1, 5, 3], [3, 5, 1], [2, 1, 2]]


def test_lgp_codes_hand_checked() -> None:
    assert lgp_codes(HAND_IMAGE, points=4, radius=1.0).tolist() == HAND_CODES


def test_lgp_flat_image_sets_every_bit() -> None:
    codes = lgp_codes(torch.full((7, 7), 0.3), points=16, radius=2.0)
    assert codes.shape == (3, 3)
    assert codes.unique().tolist() == [16]


@pytest.mark.parametrize(("points", "radius"), [(8, 1.0), (16, 2.0)])
def test_lgp_ramp_interpolates_exactly(points: int, radius: float) -> None:
    # On a horizontal ramp, bilinear interpolation is exact and the gradient
    # to neighbour p is R * |cos(theta_p)|; its above-mean bits form two runs
    # around 0 and 180 degrees, four transitions, so every label is P + 1.
    ramp = torch.arange(12, dtype=torch.float64).repeat(12, 1)
    assert lgp_codes(ramp, points, radius).unique().tolist() == [points + 1]


def test_lgp_histogram_sums_to_one() -> None:
    histogram = lgp_histogram(torch.rand(20, 20, generator=torch.Generator().manual_seed(0)))
    assert histogram.shape == (18,)
    assert histogram.sum().item() == pytest.approx(1.0)


def test_lgp_rejects_small_image() -> None:
    with pytest.raises(InvalidInputError, match="smaller than 5 x 5"):
        lgp_codes(torch.zeros(4, 4), points=16, radius=2.0)


def test_colour_histogram_matches_numpy() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = np.concatenate(
        [np.histogram(channel.numpy(), bins=4, range=(0.0, 1.0))[0] for channel in image]
    ) / image.numel()
    np.testing.assert_allclose(colour_histogram(image, bins=4).numpy(), expected)


def test_colour_histogram_clamps_out_of_range() -> None:
    image = torch.tensor([[[-5.0, 0.1], [0.9, 7.0]]])
    assert colour_histogram(image, bins=2).tolist() == [0.5, 0.5]


def test_to_gray_uses_bt709_weights() -> None:
    image = torch.zeros(3, 2, 2)
    image[1] = 1.0
    assert to_gray(image)[0, 0].item() == pytest.approx(0.7154)


@pytest.mark.parametrize(("channels", "length"), [(3, 30), (1, 22)])
def test_feature_vector_length(channels: int, length: int) -> None:
    image = torch.rand(channels, 32, 32, generator=torch.Generator().manual_seed(2))
    features = feature_vector(image)
    assert features.shape == (length,)
    assert FeatureSettings().length(channels) == length
    assert features.dtype == torch.float64
    assert features[: channels * 4].sum().item() == pytest.approx(1.0)
    assert features[channels * 4 :].sum().item() == pytest.approx(1.0)


def test_feature_vector_rejects_two_channels() -> None:
    with pytest.raises(InvalidInputError, match="expected 1 or 3 channels, got 2"):
        feature_vector(torch.zeros(2, 8, 8))
