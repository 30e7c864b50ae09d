"""IPGuard baselines (ProjCL, PoolCL): search, matching, thresholds and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from critprint.baselines import (
    IPGuardFingerprint,
    IPGuardSettings,
    classifier_logits,
    ipguard_fingerprint,
    is_derived,
    match_rate,
    threshold_from_negatives,
)
from critprint.baselines.heads import projection_weights
from critprint.errors import InvalidInputError
from critprint.models import ModelHandle, load_model, read_state_dict, save_state_dict

HEADS = ("projection", "pool")


def small(head: str, **changes: object) -> IPGuardSettings:
    """Return settings small enough for a unit test (8 points of 16 px, 20 steps)."""
    return dataclasses.replace(IPGuardSettings(head=head, points=8, size=16, iterations=20), **changes)


def top2_gap(handle: ModelHandle, points: torch.Tensor, settings: IPGuardSettings) -> float:
    """Return the mean gap between the largest and second-largest logit."""
    with torch.no_grad():
        top = classifier_logits(handle, points, settings).topk(2, dim=1).values
    return float((top[:, 0] - top[:, 1]).mean())


@pytest.fixture(scope="module")
def dncnn() -> ModelHandle:
    """The bundled DnCNN denoiser."""
    return load_model("zoo:dncnn")


@pytest.fixture(scope="module")
def nafnet() -> ModelHandle:
    """The bundled NAFNet denoiser, trained independently of DnCNN."""
    return load_model("zoo:nafnet")


@pytest.fixture(scope="module")
def compact() -> ModelHandle:
    """The bundled x4 Compact super-resolution model."""
    return load_model("zoo:compact-x4")


@pytest.fixture(scope="module")
def dncnn_fingerprints(dncnn: ModelHandle) -> dict[str, IPGuardFingerprint]:
    """DnCNN's fingerprint under each head, with the small settings."""
    return {head: ipguard_fingerprint(dncnn, small(head)) for head in HEADS}


@pytest.fixture(scope="module")
def perturbed_dncnn(tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    """DnCNN with Gaussian noise of 0.1 % of each tensor's mean magnitude added to every weight."""
    generator = torch.Generator().manual_seed(7)
    state = {
        name: tensor + 1e-3 * tensor.abs().mean() * torch.randn(tensor.shape, generator=generator)
        if tensor.is_floating_point() else tensor
        for name, tensor in read_state_dict("zoo:dncnn").items()
    }
    path = save_state_dict(state, tmp_path_factory.mktemp("perturbed") / "dncnn.safetensors")
    return load_model(path)


# --- The fingerprint itself -------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_fingerprint_shapes_and_range(dncnn_fingerprints: dict[str, IPGuardFingerprint], head: str) -> None:
    fingerprint = dncnn_fingerprints[head]
    assert fingerprint.points.shape == (8, 3, 16, 16)
    assert fingerprint.points.dtype == torch.float32
    assert fingerprint.points.min() >= 0.0
    assert fingerprint.points.max() <= 1.0
    assert fingerprint.labels.dtype == torch.int64
    assert fingerprint.labels.shape == (8,)
    assert fingerprint.labels.min() >= 0
    assert fingerprint.labels.max() < 100


@pytest.mark.parametrize("head", HEADS)
def test_labels_are_source_argmax(
    dncnn: ModelHandle, dncnn_fingerprints: dict[str, IPGuardFingerprint], head: str
) -> None:
    fingerprint = dncnn_fingerprints[head]
    with torch.no_grad():
        logits = classifier_logits(dncnn, fingerprint.points, fingerprint.settings)
    assert torch.equal(logits.argmax(dim=1), fingerprint.labels)


@pytest.mark.parametrize("head", HEADS)
def test_search_shrinks_top_two_gap(dncnn: ModelHandle, head: str) -> None:
    settings = small(head)
    start = ipguard_fingerprint(dncnn, small(head, iterations=0))
    searched = ipguard_fingerprint(dncnn, settings)
    before = top2_gap(dncnn, start.points, settings)
    after = top2_gap(dncnn, searched.points, settings)
    assert after < 0.5 * before


@pytest.mark.parametrize("head", HEADS)
def test_search_deterministic_under_global_seed(dncnn: ModelHandle, head: str) -> None:
    torch.manual_seed(1)
    first = ipguard_fingerprint(dncnn, small(head))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = ipguard_fingerprint(dncnn, small(head))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.points, second.points)
    assert torch.equal(first.labels, second.labels)
    assert first.to_dict() == second.to_dict()


def test_other_seed_other_points(dncnn: ModelHandle) -> None:
    first = ipguard_fingerprint(dncnn, small("projection", iterations=1))
    second = ipguard_fingerprint(dncnn, small("projection", iterations=1, seed=1))
    assert not torch.equal(first.points, second.points)


def test_progress_reports_steps(dncnn: ModelHandle) -> None:
    calls: list[tuple[int, int]] = []
    ipguard_fingerprint(
        dncnn, small("pool", iterations=25), progress=lambda step, total, loss: calls.append((step, total))
    )
    assert calls == [(10, 25), (20, 25), (25, 25)]


def test_to_dict_json_summary(dncnn_fingerprints: dict[str, IPGuardFingerprint]) -> None:
    summary = json.loads(json.dumps(dncnn_fingerprints["pool"].to_dict()))
    assert summary["baseline"] == "PoolCL"
    assert summary["settings"]["head"] == "pool"
    assert summary["settings"]["points"] == 8
    assert summary["point_shape"] == [8, 3, 16, 16]
    assert summary["labels"] == dncnn_fingerprints["pool"].labels.tolist()
    assert dncnn_fingerprints["projection"].to_dict()["baseline"] == "ProjCL"


def test_nothing_is_printed(dncnn: ModelHandle, capsys: pytest.CaptureFixture[str]) -> None:
    fingerprint = ipguard_fingerprint(dncnn, small("pool", iterations=2))
    match_rate(dncnn, fingerprint)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# --- Heads ------------------------------------------------------------------


def test_projection_head_seeded_matrix(dncnn: ModelHandle) -> None:
    settings = small("projection", seed=3)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dncnn(images).flatten(1) @ projection_weights(3, 3 * 16 * 16, 100).T
        logits = classifier_logits(dncnn, images, settings)
        other_seed = classifier_logits(dncnn, images, small("projection", seed=4))
    assert logits.shape == (2, 100)
    assert torch.allclose(logits, expected)
    assert not torch.allclose(logits, other_seed)


def test_projection_weights_variance() -> None:
    weights = projection_weights(0, 3072, 100)
    assert weights.shape == (100, 3072)
    assert weights.var().item() == pytest.approx(1 / 3072, rel=0.05)


def test_pool_head_ten_by_ten(dncnn: ModelHandle) -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(dncnn(images).mean(dim=1, keepdim=True), 10).flatten(1)
        logits = classifier_logits(dncnn, images, small("pool"))
    assert torch.allclose(logits, expected)


def test_heads_super_resolution_output(compact: ModelHandle) -> None:
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = compact(images)
        assert output.shape == (2, 3, 32, 32)
        projected = classifier_logits(compact, images, small("projection", size=8))
        pooled = classifier_logits(compact, images, small("pool", size=8))
    assert torch.allclose(projected, output.flatten(1) @ projection_weights(0, 3 * 32 * 32, 100).T)
    assert pooled.shape == (2, 100)


# --- Matching ---------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_model_matches_own_fingerprint(
    dncnn: ModelHandle, dncnn_fingerprints: dict[str, IPGuardFingerprint], head: str
) -> None:
    assert match_rate(dncnn, dncnn_fingerprints[head]) == 1.0


@pytest.mark.parametrize("head", HEADS)
def test_sr_model_matches_own_fingerprint(compact: ModelHandle, head: str) -> None:
    fingerprint = ipguard_fingerprint(compact, small(head, size=8))
    assert fingerprint.points.shape == (8, 3, 8, 8)
    assert match_rate(compact, fingerprint) == 1.0


@pytest.mark.parametrize("head", HEADS)
def test_perturbed_copy_versus_independent_model(
    dncnn_fingerprints: dict[str, IPGuardFingerprint],
    perturbed_dncnn: ModelHandle,
    nafnet: ModelHandle,
    head: str,
) -> None:
    fingerprint = dncnn_fingerprints[head]
    copy_rate = match_rate(perturbed_dncnn, fingerprint)
    independent_rate = match_rate(nafnet, fingerprint)
    assert copy_rate >= 0.75
    assert independent_rate <= 0.5
    assert independent_rate < copy_rate
    threshold = threshold_from_negatives([independent_rate])
    assert is_derived(copy_rate, threshold)
    assert not is_derived(independent_rate, threshold)


def test_match_rate_across_batches(dncnn: ModelHandle) -> None:
    fingerprint = ipguard_fingerprint(dncnn, small("pool", points=40, size=8, iterations=1))
    wrong = IPGuardFingerprint(fingerprint.settings, fingerprint.points, (fingerprint.labels + 1) % 100)
    mixed_labels = torch.cat([fingerprint.labels[:30], wrong.labels[30:]])
    mixed = IPGuardFingerprint(fingerprint.settings, fingerprint.points, mixed_labels)
    assert match_rate(dncnn, fingerprint) == 1.0
    assert match_rate(dncnn, wrong) == 0.0
    assert match_rate(dncnn, mixed) == 0.75


# --- Thresholds -------------------------------------------------------------


def test_threshold_largest_negative_rate() -> None:
    assert threshold_from_negatives([0.1, 0.4, 0.25]) == 0.4
    assert threshold_from_negatives((0.0,)) == 0.0
    assert threshold_from_negatives([]) == 0.0


def test_derived_strictly_above_threshold() -> None:
    assert is_derived(0.41, 0.4)
    assert not is_derived(0.4, 0.4)
    assert not is_derived(0.1, 0.4)
    assert is_derived(0.05, 0.0)
    assert not is_derived(1.0, 1.0)


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_bad_rates_are_rejected(rate: object) -> None:
    with pytest.raises(InvalidInputError, match="rate"):
        threshold_from_negatives([0.2, rate])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="rate"):
        is_derived(rate, 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="threshold"):
        is_derived(0.5, rate)  # type: ignore[arg-type]


# --- Bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"head": "softmax"}, "'softmax'"),
        ({"points": 0}, "points 0"),
        ({"points": True}, "points True"),
        ({"points": 2.0}, "points 2.0"),
        ({"size": 0}, "size 0"),
        ({"iterations": -1}, "iterations -1"),
        ({"learning_rate": 0.0}, "learning_rate 0.0"),
        ({"learning_rate": math.nan}, "learning_rate nan"),
        ({"margin": -0.1}, "margin -0.1"),
        ({"margin": math.inf}, "margin inf"),
        ({"classes": 2}, "classes 2"),
        ({"head": "pool", "classes": 99}, "classes 99"),
        ({"seed": -1}, "seed -1"),
        ({"seed": 2**63}, f"seed {2**63}"),
    ],
)
def test_bad_settings_are_rejected(changes: dict[str, object], named: str) -> None:
    arguments = {"head": "projection", **changes}
    with pytest.raises(InvalidInputError) as caught:
        IPGuardSettings(**arguments)  # type: ignore[arg-type]
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_projection_head_non_square_classes() -> None:
    assert IPGuardSettings(head="projection", classes=99).classes == 99


def test_size_below_model_minimum(dncnn: ModelHandle) -> None:
    strict = dataclasses.replace(dncnn, minimum_size=32)
    with pytest.raises(InvalidInputError, match=r"size 16.*size >= 32"):
        ipguard_fingerprint(strict, small("pool"))


def test_match_rate_rejects_unfit_suspect(
    dncnn: ModelHandle, dncnn_fingerprints: dict[str, IPGuardFingerprint]
) -> None:
    fingerprint = dncnn_fingerprints["pool"]
    with pytest.raises(InvalidInputError, match="minimum|at least 32"):
        match_rate(dataclasses.replace(dncnn, minimum_size=32), fingerprint)
    with pytest.raises(InvalidInputError, match="channels"):
        match_rate(dataclasses.replace(dncnn, input_channels=1), fingerprint)


def test_wrong_argument_types_rejected(dncnn: ModelHandle, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="IPGuardSettings"):
        ipguard_fingerprint(dncnn, {"head": "pool"})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="IPGuardFingerprint"):
        match_rate(dncnn, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="labels"):
        IPGuardFingerprint(small("pool"), torch.zeros(2, 3, 16, 16), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="points"):
        IPGuardFingerprint(small("pool"), torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))
