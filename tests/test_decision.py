"""The chi-squared threshold and verdicts."""

from __future__ import annotations

import pytest
import torch

from critprint.decision import decide, feature_distance, probability, threshold
from critprint.errors import InvalidInputError


def test_threshold_for_thirty_bins() -> None:
    # chi2.ppf(0.05, 30) = 18.4927; 18.4927 * 0.015^2 / 30 = 1.387e-4.
    assert threshold(30) == pytest.approx(1.387e-4, rel=1e-3)
    assert threshold(30) == pytest.approx(18.4927 * 0.015**2 / 30, rel=1e-5)


def test_threshold_grows_with_sigma() -> None:
    assert threshold(30, sigma_h=0.03) == pytest.approx(4 * threshold(30))


def test_probability_at_threshold_equals_alpha() -> None:
    assert probability(threshold(30), 30) == pytest.approx(0.05)


def test_distance_is_mean_square() -> None:
    first = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    second = torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert feature_distance(first, second) == pytest.approx(0.125)


def test_decide_identical_is_derived() -> None:
    features = torch.full((30,), 1 / 30, dtype=torch.float64)
    decision = decide(features, features.clone())
    assert decision.verdict == "derived"
    assert decision.distance == 0.0
    assert decision.ratio == 0.0
    assert decision.probability == 0.0


def test_decide_far_is_independent() -> None:
    source = torch.zeros(30, dtype=torch.float64)
    suspect = torch.zeros(30, dtype=torch.float64)
    source[0] = 1.0
    suspect[1] = 1.0
    decision = decide(source, suspect)
    assert decision.verdict == "independent"
    assert decision.ratio == pytest.approx(decision.distance / decision.threshold)
    assert decision.ratio > 1


def test_decide_rejects_shape_mismatch() -> None:
    with pytest.raises(InvalidInputError, match=r"\(30,\) and \(22,\)"):
        decide(torch.zeros(30), torch.zeros(22))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_threshold_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(InvalidInputError, match="invalid alpha"):
        threshold(30, alpha=alpha)



def test_feature_distances_match_one_by_one() -> None:
    from critprint.decision import feature_distances

    generator = torch.Generator().manual_seed(3)
    sources = torch.rand(6, 30, generator=generator, dtype=torch.float64)
    suspect = sources[2] + 0.001
    batch = feature_distances(sources, suspect)
    assert batch.shape == (6,)
    for row, value in zip(sources, batch.tolist(), strict=True):
        assert value == pytest.approx(feature_distance(row, suspect), rel=1e-12)
    assert int(batch.argmin()) == 2


def test_feature_distances_reject_mismatched_shapes() -> None:
    from critprint.decision import feature_distances

    with pytest.raises(InvalidInputError, match=r"expected shapes \(N, L\) and \(L,\)"):
        feature_distances(torch.zeros(3, 30), torch.zeros(22))
