"""The chi-squared decision between a source and a suspect feature vector.

Following "Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV
2023), the per-bin error e = h_source - h_suspect is modelled as N(0, sigma_h^2)
with sigma_h = 0.015. The distance d = ||e||^2 / L then gives
Z = L * d / sigma_h^2 ~ chi-squared(L), and the suspect is judged derived when
P[Z <= z] < alpha, that is when d < eta = chi2.ppf(alpha, L) * sigma_h^2 / L.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from scipy.stats import chi2

from critprint.checks import check_positive, check_range
from critprint.errors import InvalidInputError

__all__ = ["Verdict", "Decision", "feature_distance", "threshold", "probability", "decide", "feature_distances"]

Verdict = Literal["derived", "independent"]


@dataclass(frozen=True)
class Decision:
    """The numbers behind a verdict.

    Attributes:
        distance: d, the mean squared difference of the two feature vectors.
        threshold: eta; the suspect is derived when d < eta.
        ratio: d / eta; below 1 means derived.
        probability: P[Z <= z] under the chi-squared model; below alpha
            means derived.
        length: L, the feature length (degrees of freedom).
        verdict: ``"derived"`` or ``"independent"``.
    """

    distance: float
    threshold: float
    ratio: float
    probability: float
    length: int
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-compatible dictionary."""
        return asdict(self)


def feature_distance(h_source: torch.Tensor, h_suspect: torch.Tensor) -> float:
    """Return d = ||h_source - h_suspect||^2 / L for two (L,) feature vectors."""
    if h_source.ndim != 1 or h_source.shape != h_suspect.shape:
        raise InvalidInputError(
            f"invalid feature vectors: expected two equal shapes (L,), got {tuple(h_source.shape)} "
            f"and {tuple(h_suspect.shape)}"
        )
    difference = h_source.to(torch.float64) - h_suspect.to(torch.float64)
    return float(difference.pow(2).sum() / difference.numel())


@functools.lru_cache(maxsize=64)
def threshold(length: int, alpha: float = 0.05, sigma_h: float = 0.015) -> float:
    """Return eta = chi2.ppf(alpha, L) * sigma_h^2 / L, cached because identification needs it once per result.

    Example:
        >>> round(threshold(30), 7)
        0.0001387
    """
    if length < 1:
        raise InvalidInputError(f"invalid feature length {length!r}: expected an integer >= 1")
    check_range("alpha", alpha, 0.0, 1.0)
    check_positive("sigma_h", sigma_h)
    return float(chi2.ppf(alpha, length) * sigma_h**2 / length)


def probability(distance: float, length: int, sigma_h: float = 0.015) -> float:
    """Return P[Z <= z] with z = L * d / sigma_h^2 and Z ~ chi-squared(L)."""
    return float(chi2.cdf(length * distance / sigma_h**2, length))


def decide(
    h_source: torch.Tensor,
    h_suspect: torch.Tensor,
    alpha: float = 0.05,
    sigma_h: float = 0.015,
) -> Decision:
    """Decide whether a suspect is derived from a source from their features.

    Args:
        h_source: Source feature vector, shape (L,).
        h_suspect: Suspect feature vector, shape (L,).
        alpha: Significance level.
        sigma_h: Assumed standard deviation of the per-bin error.
    """
    length = int(h_source.numel())
    distance = feature_distance(h_source, h_suspect)
    eta = threshold(length, alpha, sigma_h)
    verdict: Verdict = "derived" if distance < eta else "independent"
    return Decision(
        distance=distance,
        threshold=eta,
        ratio=distance / eta,
        probability=probability(distance, length, sigma_h),
        length=length,
        verdict=verdict,
    )



def feature_distances(h_sources: torch.Tensor, h_suspect: torch.Tensor) -> torch.Tensor:
    """Return d between a suspect and each of many sources, as one float64 tensor (N,).

    Each value equals :func:`feature_distance` of that row up to rounding
    (the sums run in another order), so ranking a registry of 100,000
    fingerprints costs one array operation instead of 100,000 calls.

    Args:
        h_sources: Source feature vectors, shape (N, L).
        h_suspect: Suspect feature vector, shape (L,).

    Example:
        >>> sources = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
        >>> feature_distances(sources, torch.tensor([0.5, 0.5])).tolist()
        [0.0, 0.16000000000000003]
    """
    if h_sources.ndim != 2 or h_suspect.ndim != 1 or h_sources.shape[1] != h_suspect.shape[0]:
        raise InvalidInputError(
            f"invalid feature vectors: expected shapes (N, L) and (L,), got {tuple(h_sources.shape)} "
            f"and {tuple(h_suspect.shape)}"
        )
    difference = h_sources.to(torch.float64) - h_suspect.to(torch.float64)
    return difference.pow(2).sum(dim=1) / difference.shape[1]
