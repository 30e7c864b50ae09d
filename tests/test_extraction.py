"""Critical-image extraction: determinism, shapes and bad models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from critprint.errors import IncompatibleModelError
from critprint.extraction import extract_critical_image
from critprint.models import load_model
from critprint.protocol import Protocol


def test_same_protocol_gives_identical_image(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    first = extract_critical_image(handle, fast_denoise)
    second = extract_critical_image(handle, fast_denoise)
    assert torch.equal(first.critical_image, second.critical_image)
    assert first.loss == second.loss


def test_other_seed_gives_other_image(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    first = extract_critical_image(handle, fast_denoise)
    second = extract_critical_image(handle, fast_denoise.replace(seed=1))
    assert not torch.equal(first.critical_image, second.critical_image)


def test_image_shape_and_range(model_dir: Path, fast_sr: Protocol) -> None:
    result = extract_critical_image(load_model(model_dir / "upscaler.safetensors"), fast_sr)
    image = result.critical_image
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0


def test_optimisation_lowers_objective(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    short = extract_critical_image(handle, fast_denoise.replace(iterations=10, noise_sigma=0.0))
    long = extract_critical_image(handle, fast_denoise.replace(iterations=200, noise_sigma=0.0))
    assert long.loss < short.loss


def test_progress_reports_steps(model_dir: Path, fast_denoise: Protocol) -> None:
    calls: list[tuple[int, int]] = []
    extract_critical_image(
        load_model(model_dir / "denoiser_a.safetensors"),
        fast_denoise.replace(iterations=25),
        progress=lambda step, total, loss: calls.append((step, total)),
    )
    assert calls == [(10, 25), (20, 25), (25, 25)]


def test_cosine_schedule_changes_result(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    constant = extract_critical_image(handle, fast_denoise)
    cosine = extract_critical_image(handle, fast_denoise.replace(schedule="cosine"))
    assert not torch.equal(constant.critical_image, cosine.critical_image)


def test_constraint_changes_result(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    clamped = extract_critical_image(handle, fast_denoise.replace(constraint="clamp"))
    free = extract_critical_image(handle, fast_denoise.replace(constraint="none"))
    assert not torch.equal(clamped.critical_image, free.critical_image)
    assert free.critical_image.min() >= 0.0
    assert free.critical_image.max() <= 1.0


def test_scale_mismatch_rejected(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "upscaler.safetensors")
    with pytest.raises(IncompatibleModelError, match="scale 4 but the protocol needs scale 1"):
        extract_critical_image(handle, fast_denoise)


def test_size_below_model_minimum_rejected(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    handle.minimum_size = 64
    with pytest.raises(IncompatibleModelError, match="below the minimum 64 px"):
        extract_critical_image(handle, fast_denoise)


def test_nan_model_rejected(model_dir: Path, fast_denoise: Protocol) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    handle.call = lambda module, image: module(image) * float("nan")
    with pytest.raises(IncompatibleModelError, match="non-finite objective"):
        extract_critical_image(handle, fast_denoise)


def test_thread_count_keeps_verdict(model_dir: Path, fast_denoise: Protocol) -> None:
    from critprint.decision import decide
    from critprint.features import feature_vector

    handle = load_model(model_dir / "denoiser_a.safetensors")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = extract_critical_image(handle, fast_denoise)
        torch.set_num_threads(2)
        double = extract_critical_image(handle, fast_denoise)
    finally:
        torch.set_num_threads(threads)
    decision = decide(feature_vector(single.critical_image), feature_vector(double.critical_image))
    assert decision.verdict == "derived"
    assert decision.ratio < 0.1


def test_default_runtime_matches_no_runtime(model_dir: Path, fast_denoise: Protocol) -> None:
    from critprint.extraction import Runtime

    handle = load_model(model_dir / "denoiser_a.safetensors")
    plain = extract_critical_image(handle, fast_denoise)
    explicit = extract_critical_image(handle, fast_denoise, runtime=Runtime(device="cpu"))
    assert torch.equal(plain.critical_image, explicit.critical_image)


@pytest.mark.parametrize(
    "settings", [{"autocast": "bfloat16"}, {"channels_last": True}], ids=["bfloat16", "channels-last"]
)
def test_runtime_variants_keep_verdict(model_dir: Path, fast_denoise: Protocol, settings: dict[str, object]) -> None:
    from critprint.decision import decide
    from critprint.extraction import Runtime
    from critprint.features import feature_vector

    handle = load_model(model_dir / "denoiser_a.safetensors")
    reference = extract_critical_image(handle, fast_denoise)
    variant = extract_critical_image(handle, fast_denoise, runtime=Runtime(**settings))  # type: ignore[arg-type]
    assert variant.critical_image.dtype == torch.float32
    decision = decide(feature_vector(reference.critical_image), feature_vector(variant.critical_image))
    assert decision.verdict == "derived"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": "gpu"}, "invalid device 'gpu': expected cpu, cuda or cuda:N"),
        ({"autocast": "int8"}, "invalid autocast 'int8': expected one of none, bfloat16, float16"),
    ],
)
def test_runtime_rejects_bad_settings(settings: dict[str, str], message: str) -> None:
    from critprint.errors import InvalidInputError
    from critprint.extraction import Runtime

    with pytest.raises(InvalidInputError, match=message):
        Runtime(**settings)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_runtime_rejects_cuda_without_gpu() -> None:
    from critprint.errors import InvalidInputError
    from critprint.extraction import Runtime

    with pytest.raises(InvalidInputError, match="no CUDA GPU is available here; use --device cpu"):
        Runtime(device="cuda")
