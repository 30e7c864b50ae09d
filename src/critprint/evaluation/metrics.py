"""Scores of a detector over labelled pairs: ROC, AUC, true-positive rate at a set false-positive rate.

A pair's score is larger when the detector is more confident that the suspect
is derived from the source. Ties count half, as in the Mann-Whitney reading
of the area under the curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from critprint.errors import InvalidInputError

__all__ = ["RocSummary", "roc_curve", "roc_auc", "tpr_at_fpr", "summarise_roc", "held_out_null", "MIN_HELD_OUT_NULL"]

MIN_HELD_OUT_NULL = 3
"""Minimum number of null values :func:`held_out_null` keeps before it leaves out only the pair itself."""


@dataclass(frozen=True)
class RocSummary:
    """Area under the ROC curve and the true-positive rate at one false-positive rate."""

    auc: float
    tpr_at_fpr: float
    fpr: float
    positives: int
    negatives: int


def _check(positives: Sequence[float], negatives: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise InvalidInputError(
            f"ROC needs at least one positive and one negative pair, got {pos.size} and {neg.size}"
        )
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise InvalidInputError("ROC scores must be finite; map infinite distances to a large finite score")
    return pos, neg


def roc_curve(positives: Sequence[float], negatives: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return (false-positive rates, true-positive rates) over every threshold, from (0, 0) to (1, 1).

    A pair is called positive when its score is at least the threshold.
    """
    pos, neg = _check(positives, negatives)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = [0.0] + [float((neg >= value).mean()) for value in thresholds]
    tpr = [0.0] + [float((pos >= value).mean()) for value in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Return the probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = _check(positives, negatives)
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * equal) / (pos.size * neg.size))


def tpr_at_fpr(positives: Sequence[float], negatives: Sequence[float], fpr: float = 0.01) -> float:
    """Return the largest true-positive rate whose false-positive rate is at most ``fpr``.

    With fewer than 1 / ``fpr`` negatives this means no negative may be
    called positive at all.
    """
    if not 0.0 <= fpr < 1.0:
        raise InvalidInputError(f"invalid false-positive rate {fpr!r}: expected a value in [0, 1)")
    rates_fp, rates_tp = roc_curve(positives, negatives)
    allowed = rates_fp <= fpr + 1e-12
    return float(rates_tp[allowed].max())


def summarise_roc(positives: Sequence[float], negatives: Sequence[float], fpr: float = 0.01) -> RocSummary:
    """Return the AUC and the true-positive rate at ``fpr`` of one detector."""
    return RocSummary(
        auc=roc_auc(positives, negatives),
        tpr_at_fpr=tpr_at_fpr(positives, negatives, fpr),
        fpr=fpr,
        positives=len(positives),
        negatives=len(negatives),
    )


def held_out_null(values: Mapping[tuple[str, str], float], source: str, suspect: str) -> list[float]:
    """Return the null values of reference pairs that share no model with (source, suspect).

    An attacked copy is named ``SOURCE+ATTACK``, so its source counts as one
    of its models. When that leaves fewer than :data:`MIN_HELD_OUT_NULL`
    values (a task with three references), only the pair itself is left out.
    """
    models = {source, suspect.split("+")[0]}
    disjoint = [value for pair, value in values.items() if not models & set(pair)]
    if len(disjoint) >= MIN_HELD_OUT_NULL:
        return disjoint
    return [value for pair, value in values.items() if set(pair) != models]
