"""Verdicts beyond the chi-squared rule of "Fingerprinting Deep Image Restoration Models": calibrated, query-only, combined.

:func:`verify_query` decides from a suspect's outputs alone (no gradients):
it shows the suspect the probes made from the source's critical image and
compares its outputs with the source's outputs stored in the fingerprint.
:func:`calibrated_verdict` re-reads a white-box :class:`Verification` with a
measured null distribution instead of the assumed sigma_h.
:func:`combined_verdict` decides on the product d x q of both statistics.
The two fail on different pairs. Fine-tuning shifts the critical image's
histograms and so d, while q of the copy stays small. Two models of one
recipe trained on other photos have a small q, while d tells them apart.
The protocol study measured the product on the evaluation zoo
(docs/benchmarks.md, "Protocol study").
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from critprint.api import Verification
from critprint.calibration import CalibratedDecision, Calibration
from critprint.decision import Verdict
from critprint.errors import InvalidInputError
from critprint.fingerprint import Fingerprint
from critprint.query import ProbeSettings, QueryFunction, probe_inputs, quantize_8bit, query_distance, run_queries

__all__ = ["QueryVerification", "verify_query", "calibrated_verdict", "combined_verdict"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryVerification:
    """The result of a query-only verification.

    Attributes:
        source: The source fingerprint's name.
        suspect: The suspect: a model path, or the query command.
        task: The protocol's task.
        q: Mean squared difference between the suspect's and the source's
            8-bit outputs on the probes.
        threshold: The calibrated threshold of q; derived below it.
        ratio: q / threshold.
        p_empirical: Share of independent pairs with q at most this one,
            (1 + k) / (n + 1).
        p_fitted: Lower tail of the log-normal fitted to the null, or None.
        null_size: Number of independent pairs in the calibration.
        fpr: The target false-positive rate.
        verdict: ``derived`` or ``independent``.
        source_error: Mean squared error of the source's output on the first
            probe against the 8-bit critical image.
        suspect_error: The same for the suspect.
        probes: Number of probes shown to the suspect.
        elapsed_seconds: Wall-clock time.
        source_sha256: SHA-256 of the source model.
        suspect_sha256: SHA-256 of the suspect model file, or "" for a command.
        protocol_settings: The source's protocol.
        calibration_key: Key of the calibration used.
    """

    source: str
    suspect: str
    task: str
    q: float
    threshold: float
    ratio: float
    p_empirical: float
    p_fitted: float | None
    null_size: int
    fpr: float
    verdict: Verdict
    source_error: float
    suspect_error: float
    probes: int
    elapsed_seconds: float
    source_sha256: str
    suspect_sha256: str
    protocol_settings: dict[str, Any]
    calibration_key: str

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-compatible dictionary."""
        return asdict(self) | {"rule": "query-only"}


def _stored_probes(source: Fingerprint, source_name: str) -> tuple[ProbeSettings, torch.Tensor]:
    if source.probe_outputs is None or source.probe_settings is None:
        raise InvalidInputError(
            f"fingerprint {source_name} contains no query probe outputs (made before query-only verification); "
            "register the source model again"
        )
    return ProbeSettings.from_dict(source.probe_settings), source.probe_outputs


def _require_query_null(calibration: Calibration) -> None:
    if not calibration.q_null:
        raise InvalidInputError(
            "the calibration contains no query-only null sample; make it with critprint calibrate (reference models "
            "loaded, not fingerprint files only)"
        )


def verify_query(
    suspect: QueryFunction,
    source: Fingerprint,
    calibration: Calibration,
    fpr: float = 0.01,
    source_name: str = "fingerprint",
    suspect_label: str = "suspect",
    suspect_sha256: str = "",
) -> QueryVerification:
    """Decide whether a suspect is derived from a source using only the suspect's outputs.

    Args:
        suspect: Maps a probe (C, h, w) in [0, 1] to the suspect's output;
            see :func:`critprint.query.model_query` and
            :func:`critprint.query.command_query`.
        source: The source fingerprint, with its probe outputs.
        calibration: The null sample of q for the source's protocol.
        fpr: Target false-positive rate.

    Raises:
        InvalidInputError: If the fingerprint has no probe outputs or the
            calibration has no query null sample.
        IncompatibleModelError: If the suspect's outputs have the wrong shape.
    """
    start = time.perf_counter()
    settings, source_outputs = _stored_probes(source, source_name)
    _require_query_null(calibration)
    protocol = source.protocol
    inputs = probe_inputs(source.critical_image, protocol, settings)
    outputs = run_queries(suspect, inputs, protocol.scale)
    q = query_distance(source_outputs, outputs)
    decision: CalibratedDecision = calibration.decide("q", q, fpr)
    clean = quantize_8bit(source.critical_image)
    logger.info("query-only %s against %s: q = %.3g, threshold %.3g", suspect_label, source_name, q, decision.threshold)
    return QueryVerification(
        source=source_name,
        suspect=suspect_label,
        task=protocol.task,
        q=q,
        threshold=decision.threshold,
        ratio=decision.ratio,
        p_empirical=decision.p_empirical,
        p_fitted=decision.p_fitted,
        null_size=decision.null.n,
        fpr=decision.null.fpr,
        verdict=decision.verdict,
        source_error=float((source_outputs[0].double() - clean.double()).pow(2).mean()),
        suspect_error=float((outputs[0].double() - clean.double()).pow(2).mean()),
        probes=settings.count,
        elapsed_seconds=time.perf_counter() - start,
        source_sha256=source.model.sha256,
        suspect_sha256=suspect_sha256,
        protocol_settings=protocol.to_dict(),
        calibration_key=calibration.key,
    )


def calibrated_verdict(verification: Verification, calibration: Calibration, fpr: float = 0.01) -> CalibratedDecision:
    """Decide a white-box verification with the calibration's null sample of d instead of the chi-squared eta."""
    return calibration.decide("d", verification.distance, fpr)


def combined_verdict(
    verification: Verification, query: QueryVerification, calibration: Calibration, fpr: float = 0.01
) -> CalibratedDecision:
    """Decide on d x q, the white-box distance times the query-only distance, with the calibration's null of it.

    Raises:
        InvalidInputError: If the calibration has no query-only null sample.
    """
    _require_query_null(calibration)
    return calibration.decide("dq", verification.distance * query.q, fpr)
