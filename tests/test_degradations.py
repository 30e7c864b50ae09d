"""Gradients and shapes of the degradations and the total variation."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from critprint.degradations import degrade_denoise, degrade_sr, get_degradation, total_variation
from critprint.errors import InvalidInputError


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
