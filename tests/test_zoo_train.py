"""The training degradations of the zoo's deblurring, low-light, deraining and JPEG models."""

from __future__ import annotations

import pytest
import torch

from critprint.degradations import degrade_jpeg, degrade_lowlight
from critprint.protocol import get_protocol
from critprint.zoo.train import (
    MODEL_SPECS,
    PROTOCOL_TASKS,
    degradation_settings,
    degrade,
    degrade_heldout,
    degrade_task,
)


def _clean(batch: int = 3, side: int = 24) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("task", PROTOCOL_TASKS)
def test_degradation_shape_and_determinism(task: str) -> None:
    clean = _clean()
    first = degrade_task(task, clean, torch.Generator().manual_seed(1))
    again = degrade_task(task, clean, torch.Generator().manual_seed(1))
    assert first.shape == clean.shape
    assert first.dtype == clean.dtype
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, clean)


@pytest.mark.parametrize("task", ["deblur", "derain"])
def test_random_parts_fresh_per_call(task: str) -> None:
    clean = _clean()
    generator = torch.Generator().manual_seed(1)
    first = degrade_task(task, clean, generator)
    second = degrade_task(task, clean, generator)
    assert not torch.equal(first, second)


def test_each_image_gets_its_own_rain() -> None:
    clean = torch.full((2, 3, 32, 32), 0.2)
    rainy = degrade_task("derain", clean, torch.Generator().manual_seed(4))
    rain = rainy - clean
    assert not torch.equal(rain[0], rain[1])
    # The same streaks fall on every channel, at most rain_intensity bright.
    assert torch.allclose(rain[:, 0], rain[:, 2])
    assert 0.0 < float(rain.max()) <= get_protocol("quick", "derain").rain_intensity + 1e-6


def test_jpeg_lowlight_match_critprint() -> None:
    clean = _clean()
    protocol_jpeg = get_protocol("quick", "jpeg")
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(degrade_task("jpeg", clean, generator), degrade_jpeg(clean, protocol_jpeg.jpeg_quality))
    assert torch.equal(degrade_task("lowlight", clean, generator), degrade_lowlight(clean, 3.0))


def test_deblur_noise_has_the_preset_sigma() -> None:
    clean = torch.full((4, 3, 48, 48), 0.5)
    blurred = degrade_task("deblur", clean, torch.Generator().manual_seed(2))
    sigma = get_protocol("quick", "deblur").noise_sigma
    assert float((blurred - clean).std()) == pytest.approx(sigma, rel=0.05)


def test_settings_are_the_quick_preset() -> None:
    assert degradation_settings("jpeg") == {"noise_sigma": 0.0, "jpeg_quality": 10}
    assert degradation_settings("deblur")["blur_sigma"] == get_protocol("quick", "deblur").blur_sigma
    with pytest.raises(ValueError, match="invalid task 'denoise'"):
        degradation_settings("denoise")


@pytest.mark.parametrize("task", PROTOCOL_TASKS)
def test_task_specs_use_their_degradation(task: str) -> None:
    specs = [spec for spec in MODEL_SPECS.values() if spec.task == task]
    assert len({spec.architecture for spec in specs}) >= 3
    assert len({spec.train_photos for spec in specs}) == len(specs)
    clean = _clean(1, 32)
    for spec in specs:
        network_input, baseline = degrade_heldout(spec, clean, torch.Generator().manual_seed(0))
        assert torch.equal(network_input, baseline)
        expected = degrade_task(task, clean, torch.Generator().manual_seed(0))
        assert torch.equal(degrade(spec, clean, torch.Generator().manual_seed(0)), expected)
