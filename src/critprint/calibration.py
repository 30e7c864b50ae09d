"""Calibrated decisions: thresholds set by a measured null distribution, not an assumed error.

The rule of "Fingerprinting Deep Image Restoration Models" assumes a per-bin
feature error sigma_h = 0.015 and derives eta from a chi-squared law. A
calibration instead measures the statistic between models known to be
independent (a reference set: the evaluation zoo, or the user's own models)
under one task and protocol, and sets the threshold at a chosen
false-positive rate (FPR):

- ``d``: the critical-image feature distance, over unordered pairs of
  references (d is symmetric);
- ``q``: the query-only output distance (:mod:`critprint.query`), over
  ordered pairs (the probes come from the first model's critical image).

With n null values the empirical FPR quantile resolves the rate only when
FPR * n >= 1; below that it is just the smallest value. So two estimates are
kept: the empirical quantile, and the quantile of a normal law fitted to
log10 of the values (a log-normal tail). The threshold is the empirical
quantile when the sample resolves the rate, and otherwise the smaller of the
two, so that no reference pair of a small sample is judged derived. Both are
reported with n. The p-value of a statistic x is reported both ways:
(1 + #{null <= x}) / (n + 1), and the fitted normal's lower tail.

A calibration is a small JSON record keyed by the full protocol and the probe
settings, never by a preset name, so a changed preset never reuses a
calibration made under other numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import chi2, norm

from critprint.checks import check_choice
from critprint.decision import Verdict, feature_distance, threshold
from critprint.errors import FingerprintFormatError, InvalidInputError
from critprint.fingerprint import (
    Fingerprint,
    atomic_write_bytes,
    load_fingerprint,
    now_utc,
    save_fingerprint,
    software_versions,
)
from critprint.models import ModelHandle, load_model
from critprint.protocol import Protocol
from critprint.query import ProbeSettings, query_distances

__all__ = [
    "Statistic",
    "STATISTICS",
    "NullThreshold",
    "CalibratedDecision",
    "Calibration",
    "null_threshold",
    "empirical_p_value",
    "calibrated_decision",
    "calibration_from_fingerprints",
    "calibration_key",
    "calibration_path",
    "save_calibration",
    "load_calibration",
    "find_calibration",
    "implied_sigma_h",
    "zoo_references",
    "calibrate_references",
]

logger = logging.getLogger(__name__)

Statistic = Literal["d", "q", "dq"]
STATISTICS: tuple[str, ...] = ("d", "q", "dq")
"""Statistics with a null sample: the histogram distance d, the query-only distance q, and dq, their product."""

_FORMAT_NAME = "critprint-calibration"
_FORMAT_VERSION = 1
_FLOOR = 1e-12  # log10 of a zero distance (an exact copy) is clipped here.


@dataclass(frozen=True)
class NullThreshold:
    """The threshold of one statistic at one false-positive rate.

    Attributes:
        statistic: ``d`` or ``q``.
        fpr: The target false-positive rate.
        n: Number of null values.
        empirical: The empirical quantile: the (floor(fpr * n) + 1)-th
            smallest null value, so at most fpr * n null values lie below it.
        fitted: The fpr quantile of a normal law fitted to log10 of the null
            values; None with fewer than 3 values.
        threshold: ``empirical`` when fpr * n >= 1, else the smaller of the
            two; a suspect is derived below it.
        resolved: Whether fpr * n >= 1, so the empirical quantile alone sets
            the threshold.
        log10_mean: Mean of log10 of the null values.
        log10_std: Standard deviation (n - 1) of log10 of the null values.
    """

    statistic: str
    fpr: float
    n: int
    empirical: float
    fitted: float | None
    threshold: float
    log10_mean: float
    log10_std: float
    resolved: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the threshold as a JSON-compatible dictionary."""
        return asdict(self)


def _check_fpr(fpr: float) -> float:
    if not isinstance(fpr, (int, float)) or not 0.0 < fpr < 1.0:
        raise InvalidInputError(f"invalid false-positive rate {fpr!r}: expected a value in (0, 1), such as 0.01")
    return float(fpr)


def _logs(values: Sequence[float]) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(values, dtype=np.float64), _FLOOR))


def null_threshold(values: Sequence[float], fpr: float, statistic: str = "d") -> NullThreshold:
    """Return the threshold of a null sample at a false-positive rate.

    Example:
        >>> t = null_threshold([1.0, 2.0, 4.0, 8.0], 0.01)
        >>> t.empirical, t.n
        (1.0, 4)

    Raises:
        InvalidInputError: If the sample is empty or the rate is not in (0, 1).
    """
    fpr = _check_fpr(fpr)
    if len(values) == 0:
        raise InvalidInputError("empty null sample: a calibration needs at least two independent reference models")
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    empirical = float(ordered[min(int(math.floor(fpr * ordered.size)), ordered.size - 1)])
    logs = _logs(ordered)
    mean = float(logs.mean())
    std = float(logs.std(ddof=1)) if logs.size > 1 else 0.0
    fitted = float(10 ** (mean + std * norm.ppf(fpr))) if logs.size >= 3 else None
    # A small epsilon keeps 0.01 * 100 from falling just below 1 in floating point.
    resolved = fpr * ordered.size >= 1.0 - 1e-9
    chosen = empirical if resolved or fitted is None else min(empirical, fitted)
    return NullThreshold(statistic=statistic, fpr=fpr, n=int(ordered.size), empirical=empirical, fitted=fitted,
                         threshold=chosen, log10_mean=mean, log10_std=std, resolved=resolved)


def empirical_p_value(values: Sequence[float], statistic: float) -> float:
    """Return (1 + #{null <= statistic}) / (n + 1), the share of independent pairs at least as close.

    Example:
        >>> empirical_p_value([1.0, 2.0, 4.0], 0.5)
        0.25
    """
    array = np.asarray(values, dtype=np.float64)
    return float((1 + int((array <= statistic).sum())) / (array.size + 1))


def implied_sigma_h(eta: float, length: int, alpha: float = 0.05) -> float:
    """Return the per-bin error sigma_h at which the chi-squared rule would give the threshold ``eta``.

    The threshold of "Fingerprinting Deep Image Restoration Models" is chi2.ppf(alpha, L) * sigma_h^2 / L. This
    function inverts it, so a calibrated threshold can be read on the same
    scale as that paper's sigma_h = 0.015.

    Example:
        >>> round(implied_sigma_h(threshold(30), 30), 6)
        0.015
    """
    return math.sqrt(max(eta, 0.0) * length / float(chi2.ppf(alpha, length)))


@dataclass(frozen=True)
class CalibratedDecision:
    """A verdict of the calibrated rule.

    Attributes:
        statistic: ``d`` (critical-image features) or ``q`` (query outputs).
        value: The pair's statistic.
        threshold: The calibrated threshold; derived below it.
        ratio: value / threshold; below 1 means derived.
        p_empirical: Share of the null sample at or below the value, (1 + k) / (n + 1).
        p_fitted: Lower tail of the fitted log-normal at the value, or None.
        null: The threshold's details (n, both estimates).
        verdict: ``derived`` or ``independent``.
    """

    statistic: str
    value: float
    threshold: float
    ratio: float
    p_empirical: float
    p_fitted: float | None
    null: NullThreshold
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-compatible dictionary."""
        return asdict(self)


def calibrated_decision(values: Sequence[float], value: float, fpr: float, statistic: str = "d") -> CalibratedDecision:
    """Decide with a null sample: derived when ``value`` lies below the threshold at ``fpr``."""
    limit = null_threshold(values, fpr, statistic)
    p_fitted = None
    if limit.fitted is not None and limit.log10_std > 0:
        p_fitted = float(norm.cdf((math.log10(max(value, _FLOOR)) - limit.log10_mean) / limit.log10_std))
    verdict: Verdict = "derived" if value < limit.threshold else "independent"
    return CalibratedDecision(
        statistic=statistic,
        value=value,
        threshold=limit.threshold,
        ratio=value / limit.threshold if limit.threshold > 0 else math.inf,
        p_empirical=empirical_p_value(values, value),
        p_fitted=p_fitted,
        null=limit,
        verdict=verdict,
    )


@dataclass(frozen=True)
class Calibration:
    """The null samples of one task and protocol, and how they were made.

    Attributes:
        task: The protocol's task.
        protocol: The full protocol, as :meth:`Protocol.to_dict` gives it.
        probes: The query probe settings.
        references: Each reference model's name and SHA-256.
        d_null: d for every unordered pair of references.
        d_pairs: The pairs of ``d_null``, in order.
        q_null: q for every ordered pair of references (source, suspect).
        q_pairs: The pairs of ``q_null``, in order.
        feature_length: L of the protocol's features.
        created_at: ISO 8601 UTC time.
        versions: Versions of the software that made it.
        note: Free text: where the references came from.
    """

    task: str
    protocol: dict[str, Any]
    probes: dict[str, Any]
    references: tuple[dict[str, str], ...]
    d_null: tuple[float, ...]
    d_pairs: tuple[tuple[str, str], ...]
    q_null: tuple[float, ...]
    q_pairs: tuple[tuple[str, str], ...]
    feature_length: int
    created_at: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        """The key of the protocol and probe settings (see :func:`calibration_key`)."""
        return calibration_key(Protocol.from_dict(self.protocol), ProbeSettings.from_dict(self.probes))

    @property
    def dq_null(self) -> tuple[float, ...]:
        """d x q for every ordered pair of references (source, suspect), in the order of ``q_pairs``."""
        distances = {frozenset(pair): value for pair, value in zip(self.d_pairs, self.d_null)}
        return tuple(distances[frozenset(pair)] * value for pair, value in zip(self.q_pairs, self.q_null))

    def values(self, statistic: str) -> tuple[float, ...]:
        """Return the null sample of ``d``, ``q`` or ``dq``."""
        check_choice("statistic", statistic, STATISTICS)
        if statistic == "d":
            return self.d_null
        return self.q_null if statistic == "q" else self.dq_null

    def decide(self, statistic: str, value: float, fpr: float) -> CalibratedDecision:
        """Decide one pair with this calibration's null sample of ``statistic``."""
        return calibrated_decision(self.values(statistic), value, fpr, statistic)

    def summary(self, fpr: float) -> dict[str, Any]:
        """Return the thresholds of both statistics, and the assumed sigma_h beside the spread they imply."""
        d_limit = null_threshold(self.d_null, fpr, "d")
        alpha = float(self.protocol.get("alpha", 0.05))
        sigma_h = float(self.protocol.get("sigma_h", 0.015))
        return {
            "task": self.task,
            "key": self.key,
            "references": len(self.references),
            "fpr": fpr,
            "d": d_limit.to_dict(),
            "q": null_threshold(self.q_null, fpr, "q").to_dict() if self.q_null else None,
            "dq": null_threshold(self.dq_null, fpr, "dq").to_dict() if self.q_null else None,
            "paper_eta": threshold(self.feature_length, alpha, sigma_h),
            "paper_sigma_h": sigma_h,
            "sigma_h_of_calibrated_threshold": implied_sigma_h(d_limit.threshold, self.feature_length, alpha),
            "sigma_h_of_median_null": math.sqrt(float(np.median(self.d_null))),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the record as stored in its JSON file."""
        data = asdict(self)
        data["references"] = [dict(item) for item in self.references]
        data["d_pairs"] = [list(pair) for pair in self.d_pairs]
        data["q_pairs"] = [list(pair) for pair in self.q_pairs]
        return {"format": _FORMAT_NAME, "format_version": _FORMAT_VERSION, "key": self.key} | data

    @classmethod
    def from_dict(cls, data: dict[str, Any], label: str = "<calibration>") -> Calibration:
        """Parse :meth:`to_dict`'s output; ``label`` names the source in errors.

        Raises:
            InvalidInputError: If it is not a calibration record or is corrupt.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT_NAME:
            raise InvalidInputError(f"{label} is not a critprint calibration; make one with critprint calibrate")
        if int(data.get("format_version", 0)) > _FORMAT_VERSION:
            raise InvalidInputError(f"calibration {label} has a newer format version; upgrade critprint")
        try:
            return cls(
                task=str(data["task"]),
                protocol=dict(data["protocol"]),
                probes=dict(data["probes"]),
                references=tuple({"name": str(r["name"]), "sha256": str(r["sha256"])} for r in data["references"]),
                d_null=tuple(float(v) for v in data["d_null"]),
                d_pairs=tuple((str(a), str(b)) for a, b in data["d_pairs"]),
                q_null=tuple(float(v) for v in data["q_null"]),
                q_pairs=tuple((str(a), str(b)) for a, b in data["q_pairs"]),
                feature_length=int(data["feature_length"]),
                created_at=str(data.get("created_at", "")),
                versions=dict(data.get("versions", {})),
                note=str(data.get("note", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(f"corrupt calibration {label}: {error!r}; make it again with critprint calibrate") from None


def calibration_key(protocol: Protocol, probes: ProbeSettings) -> str:
    """Return 16 hex digits of SHA-256 over every protocol field but its name, and the probe settings.

    The name is a label: a preset and a custom protocol with the same numbers
    describe the same extraction and share a calibration.
    """
    fields = protocol.resolved().to_dict()
    fields.pop("name", None)
    text = json.dumps({"protocol": fields, "probes": probes.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibration_from_fingerprints(
    records: dict[str, Fingerprint],
    handles: dict[str, ModelHandle] | None = None,
    probes: ProbeSettings | None = None,
    note: str = "",
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Build a calibration from the fingerprints of independent reference models.

    Args:
        records: Fingerprint per reference name, all with one protocol.
        handles: The loaded references, for the query null; None leaves
            ``q_null`` empty.
        probes: Probe settings; the default :class:`ProbeSettings` if None.
        note: Where the references came from.
        progress: Optional callback, called with a label per reference.

    Raises:
        InvalidInputError: With fewer than two references, or when their
            protocols differ.
    """
    names = list(records)
    if len(names) < 2:
        raise InvalidInputError(
            f"a calibration needs at least two independent reference models, got {len(names)}; add --reference MODEL"
        )
    protocol = records[names[0]].protocol
    for name in names[1:]:
        if records[name].protocol.to_json() != protocol.to_json():
            raise InvalidInputError(f"reference {name} was fingerprinted with another protocol than {names[0]}")
    probes = probes or ProbeSettings()
    d_pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    d_null = [feature_distance(records[a].features, records[b].features) for a, b in d_pairs]
    q_pairs: list[tuple[str, str]] = []
    q_null: list[float] = []
    if handles is not None:
        for source in names:
            if progress is not None:
                progress(f"query probes of {source}")
            values = query_distances(records[source].critical_image, protocol, handles[source],
                                     ((suspect, handles[suspect]) for suspect in names if suspect != source), probes)
            q_pairs += [(source, suspect) for suspect in values]
            q_null += list(values.values())
    return Calibration(
        task=protocol.task,
        protocol=protocol.to_dict(),
        probes=probes.to_dict(),
        references=tuple({"name": name, "sha256": records[name].model.sha256} for name in names),
        d_null=tuple(d_null),
        d_pairs=tuple(d_pairs),
        q_null=tuple(q_null),
        q_pairs=tuple(q_pairs),
        feature_length=int(records[names[0]].features.numel()),
        created_at=now_utc(),
        versions=software_versions(),
        note=note,
    )


def calibration_path(root: str | Path, protocol: Protocol, probes: ProbeSettings | None = None) -> Path:
    """Return where a registry folder keeps the calibration of a protocol: ``ROOT/calibrations/TASK-KEY.json``."""
    key = calibration_key(protocol, probes or ProbeSettings())
    return Path(root) / "calibrations" / f"{protocol.task}-{key}.json"


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write a calibration as JSON, atomically, and return its path."""
    target = Path(path)
    atomic_write_bytes(target, (json.dumps(calibration.to_dict(), indent=1) + "\n").encode())
    return target


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file.

    Raises:
        InvalidInputError: If the file is missing, not JSON or not a calibration.
    """
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"calibration file not found: {source}; check the path or run critprint calibrate") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"cannot read calibration {source}: {error}; make it again with critprint calibrate") from None
    return Calibration.from_dict(data, str(source))


def find_calibration(
    root: str | Path, protocol: Protocol, probes: ProbeSettings | None = None, path: str | Path | None = None
) -> Calibration:
    """Return the calibration for a protocol: the file ``path`` if given, else the registry's.

    Raises:
        InvalidInputError: If none exists, or the file was made under another
            protocol or other probe settings.
    """
    probes = probes or ProbeSettings()
    if path is not None:
        calibration = load_calibration(path)
    else:
        stored = calibration_path(root, protocol, probes)
        if not stored.exists():
            raise InvalidInputError(
                f"no calibration for task {protocol.task} under this protocol (key "
                f"{calibration_key(protocol, probes)}) in {Path(root) / 'calibrations'}; run critprint calibrate "
                "--against NAME first, or pass --calibration FILE"
            )
        calibration = load_calibration(stored)
    expected = calibration_key(protocol, probes)
    if calibration.key != expected:
        raise InvalidInputError(
            f"calibration {path or calibration.key} was made under another protocol (key {calibration.key}, the "
            f"fingerprint needs {expected}); run critprint calibrate --against NAME"
        )
    return calibration


def zoo_references(task: str, scale: int, channels: int = 3) -> list[str]:
    """Return the bundled models of a task, scale and channel count, as ``zoo:NAME``: the default reference set.

    For denoising and x4 super-resolution these are the evaluation zoo's six
    sources and seven hard negatives; for the other tasks, three models.
    """
    from critprint import zoo

    return [f"zoo:{entry.name}" for entry in zoo.list_models()
            if entry.task == task and entry.scale == scale and entry.channels == channels]


def calibrate_references(
    references: Sequence[str | Path | ModelHandle],
    protocol: Protocol,
    probes: ProbeSettings | None = None,
    cache_dir: str | Path | None = None,
    note: str = "",
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Fingerprint independent reference models under ``protocol`` and build their calibration.

    Args:
        references: Model paths, ``zoo:NAME`` or loaded handles; two or more
            models trained independently of each other.
        protocol: The protocol of the fingerprints the calibration will judge.
        probes: Query probe settings; the default :class:`ProbeSettings` if None.
        cache_dir: Folder where each reference's fingerprint is kept, by model
            hash and calibration key, so a second calibration reuses them.
        note: Where the references came from, recorded in the calibration.
        progress: Optional callback, called with a label per step.

    Raises:
        InvalidInputError: With fewer than two references or two with the same weights.
        IncompatibleModelError: If a reference does not fit the protocol.
    """
    from critprint.api import fingerprint_model

    probes = probes or ProbeSettings()
    protocol = protocol.resolved()
    key = calibration_key(protocol, probes)
    handles: dict[str, ModelHandle] = {}
    for reference in references:
        handle = reference if isinstance(reference, ModelHandle) else load_model(reference)
        if any(other.sha256 == handle.sha256 for other in handles.values()):
            raise InvalidInputError(f"reference {handle.source} has the same weights as another reference; list each model once")
        handles[handle.source] = handle
    if len(handles) < 2:
        raise InvalidInputError(
            f"a calibration needs at least two independent reference models, got {len(handles)}; add --reference MODEL"
        )
    records: dict[str, Fingerprint] = {}
    for name, handle in handles.items():
        cached = Path(cache_dir) / f"{handle.sha256[:16]}-{key}.safetensors" if cache_dir is not None else None
        if cached is not None and cached.exists():
            try:
                record = load_fingerprint(cached)
                if record.protocol.to_json() == protocol.to_json() and record.model.sha256 == handle.sha256:
                    records[name] = record
                    continue
            except FingerprintFormatError as error:
                logger.warning("recomputing %s: %s", cached, error)
        if progress is not None:
            progress(f"fingerprint of {name}")
        records[name] = fingerprint_model(handle, protocol)
        if cached is not None:
            save_fingerprint(records[name], cached)
    return calibration_from_fingerprints(records, handles, probes, note, progress)
