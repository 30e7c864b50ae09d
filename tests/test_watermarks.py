"""Watermarking baselines (Zhang, Quan, Ong, WeakWM): embedding, verification, fidelity and bad input."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from critprint import zoo
from critprint.attacks import RestorationTask, quantize
from critprint.baselines.watermark import (
    WATERMARK_METHODS,
    WEAKWM_WEIGHT,
    EmbedSettings,
    OngSettings,
    Watermarked,
    ZhangSettings,
    accuracy_threshold,
    default_settings,
    embed_watermark,
    fidelity,
    load_key,
    save_key,
    verify_watermark,
)
from critprint.baselines.watermark.common import read_bits, render_bits, secret_bits
from critprint.errors import FingerprintFormatError, InvalidInputError
from critprint.models import read_state_dict

SR = RestorationTask(task="sr", scale=4, eval_crop=96)
"""x4 SR scored on a 96 x 96 crop of coffee, to keep verification fast."""

FAST = {"steps": 120, "learning_rate": 1e-3, "batch_size": 2}
"""Few steps at a high rate: enough for the small Compact x4 model of the zoo to carry each watermark."""


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return read_state_dict(zoo.model_path("compact-x4"))


@pytest.fixture(scope="module")
def other() -> dict[str, torch.Tensor]:
    return read_state_dict(zoo.model_path("compact-x4-h"))


@pytest.fixture(scope="module")
def marked(source: dict[str, torch.Tensor]) -> dict[str, Watermarked]:
    return {method: embed_watermark(method, source, SR, default_settings(method, **FAST))
            for method in ("zhang", "quan", "ong")}


def test_threshold_is_the_binomial_tail() -> None:
    # P(X >= 51) for X ~ Binomial(64, 1/2) is 9.4e-7 <= 1e-6, while P(X >= 50) is 3.5e-6.
    tail = [sum(math.comb(64, k) for k in range(start, 65)) / 2.0**64 for start in (50, 51)]
    assert tail[0] > 1e-6 >= tail[1]
    assert accuracy_threshold(64, 1e-6) == 51 / 64
    # P(X >= 9) for X ~ Binomial(16, 1/2) is (1 - C(16, 8) / 2**16) / 2 = 0.4018.
    assert accuracy_threshold(16, 0.41) == 9 / 16
    assert accuracy_threshold(16, 0.40) == 10 / 16


def test_bits_are_balanced_and_read_back() -> None:
    bits = secret_bits(8, torch.Generator().manual_seed(3))
    assert bits.sum() == 32
    image = render_bits(bits, 32)
    assert image.shape == (3, 32, 32)
    assert torch.equal(read_bits(image, 8), bits)
    # A blank image reads as all zeros: exactly half of a balanced message.
    assert float((read_bits(torch.zeros(3, 32, 32), 8) == bits).float().mean()) == 0.5


@pytest.mark.parametrize("method", ["zhang", "quan", "ong"])
def test_watermark_verifies_and_the_original_does_not(
    method: str, marked: dict[str, Watermarked], source: dict[str, torch.Tensor], other: dict[str, torch.Tensor]
) -> None:
    result = marked[method]
    assert list(result.state_dict) == list(source)
    check = verify_watermark(result.state_dict, result.key, SR)
    assert check.verified, check
    assert check.threshold == 51 / 64
    for clean in (source, other):
        assert not verify_watermark(clean, result.key, SR).verified


@pytest.mark.parametrize("method", ["zhang", "quan", "ong"])
def test_watermark_survives_int8_quantization(method: str, marked: dict[str, Watermarked]) -> None:
    result = marked[method]
    assert verify_watermark(quantize(result.state_dict, 8), result.key, SR).verified


def test_fidelity_is_the_psnr_change(marked: dict[str, Watermarked], source: dict[str, torch.Tensor]) -> None:
    from critprint.attacks import measure_psnr

    cost = fidelity(source, marked["quan"].state_dict, SR)
    assert cost.psnr_before_db == pytest.approx(measure_psnr(source, SR))
    assert cost.psnr_change_db == pytest.approx(cost.psnr_after_db - cost.psnr_before_db)
    assert cost.psnr_change_db < 0
    assert cost.photos == ("coffee",)
    assert fidelity(source, source, SR).psnr_change_db == 0.0


def test_embedding_is_deterministic(source: dict[str, torch.Tensor]) -> None:
    settings = default_settings("quan", steps=3, batch_size=1)
    first, second = (embed_watermark("quan", source, SR, settings) for _ in range(2))
    assert all(torch.equal(first.state_dict[name], second.state_dict[name]) for name in source)
    assert torch.equal(first.key.tensors["trigger"], second.key.tensors["trigger"])
    third = embed_watermark("quan", source, SR, replace(settings, seed=1))
    assert not torch.equal(first.key.tensors["trigger"], third.key.tensors["trigger"])


def test_weakwm_is_quan_with_a_lower_weight() -> None:
    assert default_settings("weakwm").weight == WEAKWM_WEIGHT < default_settings("quan").weight
    assert default_settings("weakwm", weight=0.5).weight == 0.5
    assert set(WATERMARK_METHODS) == {"zhang", "quan", "ong", "weakwm"}


def test_key_round_trip(tmp_path: Path, marked: dict[str, Watermarked], source: dict[str, torch.Tensor]) -> None:
    key = marked["zhang"].key
    loaded = load_key(save_key(key, tmp_path / "zhang.key"))
    assert (loaded.method, loaded.task, loaded.scale, loaded.threshold) == ("zhang", "sr", 4, key.threshold)
    assert loaded.settings == key.settings
    assert set(loaded.tensors) == set(key.tensors)
    assert verify_watermark(marked["zhang"].state_dict, loaded, SR).accuracy == pytest.approx(
        verify_watermark(marked["zhang"].state_dict, key, SR).accuracy
    )
    (tmp_path / "bad.key").write_bytes(b"not a key")
    with pytest.raises(FingerprintFormatError, match="cannot read watermark key"):
        load_key(tmp_path / "bad.key")


def test_verify_rejects_a_key_of_another_task(marked: dict[str, Watermarked], source: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InvalidInputError, match="invalid task 'denoise' x1 for a key of 'sr' x4"):
        verify_watermark(source, marked["quan"].key, RestorationTask(task="denoise"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EmbedSettings(steps=0), "invalid steps 0: expected an integer >= 1"),
        (lambda: EmbedSettings(weight=-1.0), "invalid weight -1.0: expected a finite number > 0"),
        (lambda: EmbedSettings(learning_rate=2.0), "invalid learning rate 2.0"),
        (lambda: EmbedSettings(photos=("coffee",)), "'coffee' is held out for scoring"),
        (lambda: EmbedSettings(photos=("moon",)), "invalid photos ('moon',)"),
        (lambda: EmbedSettings(grid=5), "invalid grid 5: expected an even integer >= 4"),
        (lambda: EmbedSettings(false_alarm=0.7), "invalid false_alarm 0.7"),
        (lambda: EmbedSettings(seed=-1), "invalid seed -1"),
        (lambda: ZhangSettings(extractor_width=2), "invalid extractor_width 2"),
        (lambda: ZhangSettings(margin=-1), "invalid margin -1: expected an integer >= 0"),
        (lambda: OngSettings(key_size=3), "invalid key_size 3"),
        (lambda: default_settings("stamp"), "invalid watermark method 'stamp': expected one of 'zhang'"),
    ],
)
def test_bad_settings_raise_one_line(make: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        make()  # type: ignore[operator]
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_settings_that_do_not_fit_the_task_are_rejected(source: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InvalidInputError, match="invalid patch_size 30: expected a multiple of the scale 4"):
        embed_watermark("quan", source, SR, EmbedSettings(patch_size=30))
    with pytest.raises(InvalidInputError, match="invalid key_size 5: the logo side 20 must be a multiple of grid 8"):
        embed_watermark("ong", source, SR, OngSettings(key_size=5))
    with pytest.raises(InvalidInputError, match="invalid margin 30: the patch side 64 leaves 4 pixels"):
        embed_watermark("zhang", source, SR, ZhangSettings(margin=30))
    with pytest.raises(InvalidInputError, match="invalid settings EmbedSettings for zhang: expected ZhangSettings"):
        embed_watermark("zhang", source, SR, EmbedSettings())


def test_embedding_copes_with_in_place_inputs() -> None:
    # spandrel's RCAN multiplies its input tensor by 255 in place; reusing that tensor would wreck the training.
    rcan = read_state_dict(zoo.model_path("rcan-x4"))
    result = embed_watermark("weakwm", rcan, SR, default_settings("weakwm", steps=4, batch_size=1))
    assert fidelity(rcan, result.state_dict, SR).psnr_change_db > -1.0
    trigger = result.key.tensors["trigger"].clone()
    verify_watermark(rcan, result.key, SR)
    assert torch.equal(result.key.tensors["trigger"], trigger)
