"""Property tests for the features and the fingerprint reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from critprint.errors import FingerprintFormatError
from critprint.features import colour_histogram, feature_vector, lgp_codes
from critprint.fingerprint import fingerprint_from_bytes

unit_floats = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32)


def images(channels: int, low: int = 5, high: int = 16) -> st.SearchStrategy[np.ndarray]:
    return st.integers(low, high).flatmap(
        lambda side: arrays(np.float32, (channels, side, side), elements=unit_floats)
    )


@settings(max_examples=50, deadline=None)
@given(images(3))
def test_histograms_sum_to_one(image: np.ndarray) -> None:
    features = feature_vector(torch.from_numpy(image))
    assert features[:12].sum().item() == pytest.approx(1.0)
    assert features[12:].sum().item() == pytest.approx(1.0)
    assert (features >= 0).all()


@settings(max_examples=50, deadline=None)
@given(images(1), st.integers(1, 3))
def test_lgp_commutes_with_quarter_turns(image: np.ndarray, turns: int) -> None:
    # Quarter turns map the 16 neighbours onto themselves and bilinear
    # interpolation onto itself, and riu2 labels ignore the starting bit.
    gray = torch.from_numpy(image[0]).double()
    rotated = lgp_codes(torch.rot90(gray, turns), points=16, radius=2.0)
    assert torch.equal(rotated, torch.rot90(lgp_codes(gray, points=16, radius=2.0), turns))


@settings(max_examples=50, deadline=None)
@given(images(3, 2, 8))
def test_colour_histogram_ignores_pixel_order(image: np.ndarray) -> None:
    tensor = torch.from_numpy(image)
    shuffled = tensor.flatten(1)[:, torch.randperm(tensor[0].numel(), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(colour_histogram(tensor), colour_histogram(shuffled.view_as(tensor)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_reader(data: bytes) -> None:
    with pytest.raises(FingerprintFormatError):
        fingerprint_from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=1))
def test_damaged_fingerprint_rejected_cleanly(position: int, byte: bytes) -> None:
    from critprint.fingerprint import Fingerprint, ModelIdentity, fingerprint_bytes
    from critprint.protocol import get_protocol

    record = Fingerprint(
        critical_image=torch.zeros(3, 8, 8),
        features=torch.full((30,), 1 / 30, dtype=torch.float64),
        protocol=get_protocol("quick", "denoise"),
        model=ModelIdentity("m", "0" * 64, "spandrel", "DnCNN", 3, 3, 1),
    )
    data = bytearray(fingerprint_bytes(record))
    data[position % len(data)] = byte[0]
    try:
        parsed = fingerprint_from_bytes(bytes(data))
    except FingerprintFormatError:
        return
    assert parsed.features.shape == (30,)
