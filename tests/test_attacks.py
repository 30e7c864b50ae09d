"""Tests of the attack suite: layout, attack semantics, calibration, determinism and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_denoiser, tiny_upscaler

from critprint.attacks import (
    ATTACKS,
    RestorationTask,
    add_weight_noise,
    channel_prune,
    measure_psnr,
    prune_channels,
    quantize,
    run_attack,
)
from critprint.attacks.pruning import channel_masks
from critprint.attacks.quality import TaskNetwork, degrade_batch, output_conv_names
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.models import load_model, read_state_dict, save_state_dict

StateDict = dict[str, torch.Tensor]

DENOISE = RestorationTask("denoise", eval_crop=64, finetune_steps=5, distill_steps=5)
SR = RestorationTask("sr", scale=4, eval_crop=64, finetune_steps=5, distill_steps=5)


def _state(module: torch.nn.Module) -> StateDict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


@pytest.fixture(scope="module")
def denoiser() -> StateDict:
    """A tiny random DnCNN state dict."""
    return _state(tiny_denoiser(1))


@pytest.fixture(scope="module")
def upscaler() -> StateDict:
    """A tiny random x4 Compact state dict."""
    return _state(tiny_upscaler(3))


@pytest.fixture(scope="module")
def zoo_dncnn() -> StateDict:
    """The trained bundled denoiser."""
    return read_state_dict("zoo:dncnn")


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("kind", ["denoise", "sr"])
def test_attack_keeps_layout_and_changes_weights(
    name: str, kind: str, denoiser: StateDict, upscaler: StateDict
) -> None:
    source, task = (denoiser, DENOISE) if kind == "denoise" else (upscaler, SR)
    spec = ATTACKS[name]
    attacked = spec.apply(source, spec.default_for(task), task)
    assert list(attacked) == list(source)
    for key, tensor in source.items():
        assert attacked[key].shape == tensor.shape, key
        assert attacked[key].dtype == tensor.dtype == torch.float32, key
    assert any(not torch.equal(attacked[key], source[key]) for key in source), f"{name} changed nothing"
    # The source is left untouched.
    assert all(torch.equal(source[key], _state(tiny_denoiser(1) if kind == "denoise" else tiny_upscaler(3))[key])
               for key in source)


def test_quantize_puts_each_kernel_on_255_levels(zoo_dncnn: StateDict) -> None:
    quantized = quantize(zoo_dncnn, bits=8)
    for key, tensor in quantized.items():
        if key.endswith("weight") and tensor.ndim >= 2:
            scale = zoo_dncnn[key].abs().max().double() / 127
            steps = tensor.double() / scale
            assert torch.allclose(steps, steps.round(), atol=1e-3), key
            assert steps.abs().max() <= 127 + 1e-3
            assert 50 < tensor.unique().numel() <= 255, key
            # Rounding moves each weight by at most half a level.
            assert (tensor.double() - zoo_dncnn[key].double()).abs().max() <= scale / 2 + 1e-7
        else:
            assert torch.equal(tensor, zoo_dncnn[key]), f"{key} is not a kernel and must stay float"


def test_half_equals_float16_rounding(denoiser: StateDict) -> None:
    attacked = ATTACKS["half"].apply(denoiser, 1.0, DENOISE)
    for key, tensor in denoiser.items():
        assert torch.equal(attacked[key], tensor.half().float()), key


def test_weight_noise_scales_with_each_tensor_std(zoo_dncnn: StateDict) -> None:
    noisy = add_weight_noise(zoo_dncnn, 0.05, seed=0)
    for key, tensor in zoo_dncnn.items():
        difference = noisy[key] - tensor
        if tensor.ndim >= 2:
            ratio = float(difference.std() / tensor.std())
            assert 0.035 < ratio < 0.065, (key, ratio)
        else:
            assert torch.equal(difference, torch.zeros_like(tensor)), key


def test_prune_channels_zeroes_weakest_channels() -> None:
    weight = torch.tensor([1.0, -3.0, 0.5, 2.0]).reshape(4, 1, 1, 1)
    pruned = prune_channels({"conv.weight": weight, "conv.bias": torch.ones(4)}, 0.5)
    assert pruned["conv.weight"].flatten().tolist() == [0.0, -3.0, 0.0, 2.0]
    assert pruned["conv.bias"].tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("kind", ["denoise", "sr"])
def test_channel_prune_keeps_pruned_channels_zero_after_finetuning(
    kind: str, denoiser: StateDict, upscaler: StateDict
) -> None:
    # Compact's PReLU passes gradients into zeroed channels, so without the
    # mask fine-tuning would revive them; DnCNN's ReLU would not.
    source, task, last = (
        (denoiser, DENOISE, "model.14") if kind == "denoise" else (upscaler, SR, "body.6")
    )
    output_names = output_conv_names(TaskNetwork(source, task))
    assert output_names == (f"{last}.weight", f"{last}.bias")
    masks = channel_masks(source, 0.25, keep=output_names)
    assert masks and not set(masks) & set(output_names)
    attacked = channel_prune(source, task, 0.25)
    for key, mask in masks.items():
        assert mask.any(), key
        assert torch.count_nonzero(attacked[key][mask]) == 0, key
        # Fine-tuning moved the surviving weights.
        assert not torch.equal(attacked[key][~mask], source[key][~mask]), key
    assert not torch.equal(attacked[output_names[0]], source[output_names[0]])
    assert (attacked[output_names[0]].flatten(1).abs().sum(1) > 0).all(), "the output conv must not be pruned"


def test_calibration_halves_strength_until_within_budget(zoo_dncnn: StateDict) -> None:
    task = RestorationTask("denoise")
    messages: list[str] = []
    attacked, outcome = run_attack("prune", zoo_dncnn, task, strength=0.9, max_tries=6, progress=messages.append)
    strengths = [strength for strength, _ in outcome.tried]
    assert len(strengths) >= 2
    assert strengths[0] == 0.9
    assert all(later == pytest.approx(earlier / 2) for earlier, later in zip(strengths, strengths[1:]))
    assert all(change < -1.0 for _, change in outcome.tried[:-1])
    assert outcome.within_budget and -1.0 <= outcome.psnr_change_db <= 0.0
    assert outcome.strength == strengths[-1]
    assert outcome.tried[-1][1] == outcome.psnr_change_db
    assert outcome.psnr_after_db == pytest.approx(measure_psnr(attacked, task))
    assert outcome.psnr_before_db > 29.0  # the card reports about 30 dB on held-out photos
    assert len(messages) == len(strengths) + 1
    json.dumps(outcome.to_dict())


def test_calibration_reports_failure_when_tries_run_out(zoo_dncnn: StateDict) -> None:
    _, outcome = run_attack("prune", zoo_dncnn, RestorationTask("denoise"), strength=0.95, max_tries=2)
    assert len(outcome.tried) == 2
    assert outcome.strength == pytest.approx(0.475)
    assert not outcome.within_budget
    assert outcome.psnr_change_db < -1.0


def test_default_strengths_take_one_try(zoo_dncnn: StateDict) -> None:
    task = RestorationTask("denoise")
    _, pruned = run_attack("prune", zoo_dncnn, task)
    assert pruned.strength == 0.10
    assert pruned.within_budget
    assert len(pruned.tried) == 1
    _, quantized = run_attack("quantize", zoo_dncnn, task, max_tries=4)
    assert quantized.strength == 8
    assert len(quantized.tried) == 1
    assert quantized.within_budget
    _, uncalibrated = run_attack("prune", zoo_dncnn, task, strength=0.9, calibrate=False)
    assert len(uncalibrated.tried) == 1
    assert not uncalibrated.within_budget


def test_sr_prune_starts_at_paper_fraction(upscaler: StateDict) -> None:
    _, outcome = run_attack("prune", upscaler, SR, max_drop_db=100.0)
    assert outcome.strength == 0.05


@pytest.mark.parametrize("name", ["finetune", "weight-noise", "channel-prune", "distill"])
def test_attacks_are_deterministic(name: str, denoiser: StateDict) -> None:
    spec = ATTACKS[name]
    first = spec.apply(denoiser, spec.default, DENOISE)
    second = spec.apply(denoiser, spec.default, DENOISE)
    other = spec.apply(denoiser, spec.default, RestorationTask("denoise", finetune_steps=5, distill_steps=5, seed=1))
    assert all(torch.equal(first[key], second[key]) for key in denoiser)
    assert any(not torch.equal(first[key], other[key]) for key in denoiser)


def test_distill_trains_a_fresh_network(zoo_dncnn: StateDict) -> None:
    student = ATTACKS["distill"].apply(zoo_dncnn, 1e-3, RestorationTask("denoise", distill_steps=2))
    for key, tensor in zoo_dncnn.items():
        if tensor.ndim == 4:
            correlation = torch.corrcoef(torch.stack([tensor.flatten(), student[key].flatten()]))[0, 1]
            assert abs(float(correlation)) < 0.5, f"{key} still resembles the source"


@pytest.mark.parametrize("name", ["prune", "quantize", "half", "channel-prune"])
def test_attacked_state_dict_loads_as_same_architecture(name: str, zoo_dncnn: StateDict, tmp_path: Path) -> None:
    spec = ATTACKS[name]
    attacked = spec.apply(zoo_dncnn, spec.default, RestorationTask("denoise", finetune_steps=2))
    path = save_state_dict(attacked, tmp_path / f"{name}.safetensors")
    handle = load_model(path)
    original = load_model("zoo:dncnn")
    assert (handle.architecture, handle.scale, handle.input_channels) == (
        original.architecture, original.scale, original.input_channels,
    )
    reloaded = read_state_dict(path)
    assert all(torch.equal(reloaded[key], attacked[key]) for key in attacked)


@pytest.mark.parametrize(
    ("name", "strength", "fragment"),
    [
        ("prune", 0.0, "fraction 0.0"),
        ("prune", 1.5, "fraction 1.5"),
        ("channel-prune", float("nan"), "fraction nan"),
        ("finetune", -1e-4, "learning rate -0.0001"),
        ("distill", 2.0, "learning rate 2.0"),
        ("quantize", 8.5, "bits 8.5"),
        ("quantize", 1, "bits 1"),
        ("weight-noise", 0.0, "sigma 0.0"),
        ("half", 0.5, "strength 0.5"),
    ],
)
def test_invalid_strength_is_rejected(name: str, strength: float, fragment: str, denoiser: StateDict) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        run_attack(name, denoiser, DENOISE, strength=strength)


def test_invalid_name_budget_and_task_are_rejected(denoiser: StateDict, upscaler: StateDict) -> None:
    with pytest.raises(InvalidInputError, match="unknown attack 'shrink'.*prune"):
        run_attack("shrink", denoiser, DENOISE)
    with pytest.raises(InvalidInputError, match="max_drop_db"):
        run_attack("prune", denoiser, DENOISE, max_drop_db=0.0)
    with pytest.raises(InvalidInputError, match="max_tries"):
        run_attack("prune", denoiser, DENOISE, max_tries=0)
    with pytest.raises(InvalidInputError, match="task 'custom'"):
        RestorationTask("custom")
    with pytest.raises(InvalidInputError, match="scale 2 for task 'deblur'"):
        RestorationTask("deblur", scale=2)
    with pytest.raises(InvalidInputError, match="photo 'lena'"):
        RestorationTask("denoise", eval_photos=("lena",))
    with pytest.raises(IncompatibleModelError, match="upscales by 4"):
        measure_psnr(upscaler, DENOISE)


@pytest.mark.parametrize("task", ["deblur", "lowlight", "derain", "jpeg"])
def test_other_tasks_degrade_like_their_zoo_training(task: str, denoiser: StateDict) -> None:
    from critprint.zoo.train import degrade_task

    clean = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    restoration = RestorationTask(task, eval_crop=32)
    degraded = degrade_batch(restoration, clean, torch.Generator().manual_seed(5))
    assert torch.equal(degraded, degrade_task(task, clean, torch.Generator().manual_seed(5)))
    # A scale-1 model is scored on the task's own degradation.
    assert torch.isfinite(torch.tensor(measure_psnr(denoiser, restoration)))
