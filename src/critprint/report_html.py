"""The evidence report: one self-contained HTML file that states a verdict and everything behind it.

The file embeds its pictures as base64 PNG (the critical images) and inline
SVG (histograms, null distributions), and refers to no external URL, so it
can be handed to someone else and opened offline. It contains no script.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from critprint.api import Verification
from critprint.calibration import CalibratedDecision, Calibration
from critprint.fingerprint import Fingerprint, fingerprint_bytes
from critprint.images import to_uint8
from critprint.verdict import QueryVerification

__all__ = ["Evidence", "render_report", "png_data_uri", "fingerprint_sha256"]

_IMAGE_SIDE = 256  # Critical images are enlarged to about this many pixels, nearest neighbour.
_SOURCE_COLOUR = "#1f5fa8"
_SUSPECT_COLOUR = "#d9730d"


@dataclass(frozen=True)
class Evidence:
    """Everything an evidence report shows.

    Attributes:
        source_name: The source fingerprint's name.
        source: The source fingerprint.
        suspect_image: The suspect's critical image (C, H, W) in [0, 1].
        suspect_features: The suspect's feature vector (L,).
        verification: The white-box verification (paper rule).
        calibrated: The calibrated rule's decision, or None without a calibration.
        calibration: The calibration used, or None.
        query: The query-only verification, or None.
        combined: The combined rule's decision on d x q, or None without a query.
        created_at: ISO 8601 UTC time of the report.
        versions: Versions of the software that made the report.
    """

    source_name: str
    source: Fingerprint
    suspect_image: torch.Tensor
    suspect_features: torch.Tensor
    verification: Verification
    calibrated: CalibratedDecision | None
    calibration: Calibration | None
    query: QueryVerification | None
    created_at: str
    versions: dict[str, str]
    combined: CalibratedDecision | None = None


def fingerprint_sha256(fingerprint: Fingerprint) -> str:
    """Return the SHA-256 of a fingerprint's file bytes (as ``critprint export --bundle`` writes them)."""
    return hashlib.sha256(fingerprint_bytes(fingerprint)).hexdigest()


def png_data_uri(image: torch.Tensor, side: int = _IMAGE_SIDE) -> str:
    """Return a (C, H, W) image in [0, 1] as a ``data:image/png;base64`` URI, enlarged by an integer factor."""
    picture = Image.fromarray(to_uint8(image))
    factor = max(1, side // max(picture.width, picture.height))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3e}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.4g}"


def _histogram_svg(source: torch.Tensor, suspect: torch.Tensor, colour_bins: int, lgp_label: str) -> str:
    """Return grouped bars of the two feature vectors as SVG; a gap separates colour bins from LGP bins.

    Each group is scaled to its own largest bin, because one LGP bin often
    contains most of the pixels and would flatten every other bar.
    """
    values_a = source.double().tolist()
    values_b = suspect.double().tolist()
    count = len(values_a)
    width, height, margin = 720, 220, 30
    slot = (width - 2 * margin) / (count + 1)
    tops = [max(*values_a[:colour_bins], *values_b[:colour_bins], 1e-9),
            max(*values_a[colour_bins:], *values_b[colour_bins:], 1e-9)]
    parts = [f'<svg width="{width}" height="{height + 40}" role="img" '
             f'aria-label="feature histograms">']
    parts.append(f'<line x1="{margin}" y1="{height}" x2="{width - margin}" y2="{height}" stroke="#444"/>')
    for index, (a, b) in enumerate(zip(values_a, values_b, strict=True)):
        x = margin + slot * (index + (1 if index >= colour_bins else 0))
        for offset, value, colour in ((0.05, a, _SOURCE_COLOUR), (0.5, b, _SUSPECT_COLOUR)):
            bar = (height - 20) * value / tops[0 if index < colour_bins else 1]
            parts.append(f'<rect x="{x + offset * slot:.1f}" y="{height - bar:.1f}" width="{0.42 * slot:.1f}" '
                         f'height="{bar:.1f}" fill="{colour}"><title>bin {index}: {value:.4f}</title></rect>')
    middle = margin + slot * (colour_bins + 0.5)
    parts.append(f'<line x1="{middle:.1f}" y1="10" x2="{middle:.1f}" y2="{height}" stroke="#999" stroke-dasharray="4"/>')
    parts.append(f'<text x="{margin}" y="{height + 18}" font-size="12">colour bins ({colour_bins} in all)</text>')
    parts.append(f'<text x="{middle + 6:.1f}" y="{height + 18}" font-size="12">{_e(lgp_label)}</text>')
    parts.append(f'<rect x="{width - 220}" y="{height + 26}" width="10" height="10" fill="{_SOURCE_COLOUR}"/>'
                 f'<text x="{width - 205}" y="{height + 35}" font-size="12">source</text>'
                 f'<rect x="{width - 140}" y="{height + 26}" width="10" height="10" fill="{_SUSPECT_COLOUR}"/>'
                 f'<text x="{width - 125}" y="{height + 35}" font-size="12">suspect</text>')
    parts.append("</svg>")
    return "".join(parts)


def _null_svg(values: Sequence[float], observed: float, lines: Sequence[tuple[str, float, str]], label: str) -> str:
    """Return a histogram of log10 of a null sample as SVG, with the observed value and thresholds as vertical lines."""
    logs = np.log10(np.maximum(np.asarray(values, dtype=np.float64), 1e-12))
    marks = [observed] + [value for _, value, _ in lines]
    mark_logs = [math.log10(max(value, 1e-12)) for value in marks]
    low = math.floor(min(logs.min(), *mark_logs) * 2) / 2 - 0.25
    high = math.ceil(max(logs.max(), *mark_logs) * 2) / 2 + 0.25
    width, height, margin = 720, 220, 40
    bins = np.linspace(low, high, 41)
    counts, _ = np.histogram(logs, bins=bins)
    top = max(int(counts.max()), 1)

    def x_of(value: float) -> float:
        return margin + (width - 2 * margin) * (value - low) / (high - low)

    parts = [f'<svg width="{width}" height="{height + 50}" role="img" '
             f'aria-label="null distribution of {_e(label)}">']
    for count, start, stop in zip(counts, bins[:-1], bins[1:], strict=True):
        bar = (height - 30) * count / top
        parts.append(f'<rect x="{x_of(start):.1f}" y="{height - bar:.1f}" width="{x_of(stop) - x_of(start) - 1:.1f}" '
                     f'height="{bar:.1f}" fill="#9aa7b8"/>')
    parts.append(f'<line x1="{margin}" y1="{height}" x2="{width - margin}" y2="{height}" stroke="#444"/>')
    for tick in range(math.ceil(low), math.floor(high) + 1):
        parts.append(f'<line x1="{x_of(tick):.1f}" y1="{height}" x2="{x_of(tick):.1f}" y2="{height + 5}" stroke="#444"/>'
                     f'<text x="{x_of(tick):.1f}" y="{height + 18}" font-size="11" text-anchor="middle">1e{tick}</text>')
    for index, (name, value, colour) in enumerate([(f"this pair: {_num(observed)}", observed, "#c0392b"), *lines]):
        x = x_of(math.log10(max(value, 1e-12)))
        parts.append(f'<line x1="{x:.1f}" y1="8" x2="{x:.1f}" y2="{height}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{min(x + 4, width - 200):.1f}" y="{16 + 14 * index}" font-size="12" fill="{colour}">'
                     f'{_e(name)}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height + 40}" font-size="12" text-anchor="middle">{_e(label)} '
                 f'(log scale); grey: {len(values)} independent pairs</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(key)}</th><td>{value}</td></tr>" for key, value in rows)
    return f"<table>{body}</table>"


def _verdict_span(verdict: str) -> str:
    colour = "#b03a2e" if verdict == "derived" else "#1e8449"
    return f'<strong style="color:{colour}">{_e(verdict)}</strong>'


def render_report(evidence: Evidence) -> str:
    """Return the evidence report as one HTML document (a string)."""
    source, result = evidence.source, evidence.verification
    colour_bins = source.protocol.features.colour_bins * int(source.critical_image.shape[0])
    sections: list[str] = []

    decisions = [("paper rule (chi-squared, sigma_h = "
                  f"{_num(source.protocol.sigma_h)}, alpha = {_num(source.protocol.alpha)})",
                  f"d = {_num(result.distance)}, eta = {_num(result.threshold)}, d / eta = {_num(result.ratio)}, "
                  f"P[Z &lt;= z] = {_num(result.probability)}: {_verdict_span(result.verdict)}")]
    if evidence.calibrated is not None:
        c = evidence.calibrated
        decisions.append((f"calibrated rule (FPR {_num(c.null.fpr)}, {c.null.n} independent pairs)",
                          f"d = {_num(c.value)}, threshold = {_num(c.threshold)} (empirical {_num(c.null.empirical)}, "
                          f"log-normal fit {_num(c.null.fitted)}), p = {_num(c.p_empirical)} (empirical), "
                          f"{_num(c.p_fitted)} (fit): {_verdict_span(c.verdict)}"))
    if evidence.query is not None:
        q = evidence.query
        decisions.append((f"query-only (outputs only, {q.probes} probes, {q.null_size} independent pairs)",
                          f"q = {_num(q.q)}, threshold = {_num(q.threshold)}, p = {_num(q.p_empirical)} (empirical): "
                          f"{_verdict_span(q.verdict)}"))
    if evidence.combined is not None:
        c = evidence.combined
        decisions.append((f"combined rule (d x q, FPR {_num(c.null.fpr)}, {c.null.n} independent pairs)",
                          f"d x q = {_num(c.value)}, threshold = {_num(c.threshold)}, p = {_num(c.p_empirical)} "
                          f"(empirical): {_verdict_span(c.verdict)}"))
    sections.append("<h2>Verdicts</h2>" + _table(decisions))

    sections.append(
        "<h2>Critical images</h2><div class=\"pair\">"
        f'<figure><img id="source-image" alt="source critical image" src="{png_data_uri(source.critical_image)}">'
        f"<figcaption>source: {_e(evidence.source_name)}</figcaption></figure>"
        f'<figure><img id="suspect-image" alt="suspect critical image" src="{png_data_uri(evidence.suspect_image)}">'
        f"<figcaption>suspect: {_e(result.suspect)}</figcaption></figure></div>"
    )
    sections.append("<h2>Feature histograms</h2>"
                    + _histogram_svg(source.features, evidence.suspect_features, colour_bins,
                                     f"LGP bins (riu2, P = {source.protocol.features.lgp_points}, "
                                     f"R = {source.protocol.features.lgp_radius:g})"))

    if evidence.calibration is not None:
        calibration = evidence.calibration
        fpr = evidence.calibrated.null.fpr if evidence.calibrated is not None else 0.01
        summary = calibration.summary(fpr)
        lines = [(f"paper eta: {_num(result.threshold)}", result.threshold, "#7d3c98"),
                 (f"calibrated threshold: {_num(summary['d']['threshold'])}", summary["d"]["threshold"], "#117a65")]
        sections.append("<h2>d against the null distribution</h2>"
                        + _null_svg(calibration.d_null, result.distance, lines, "d between independent models")
                        + f"<p>The paper's sigma_h = {_num(summary['paper_sigma_h'])}; the calibrated threshold "
                        f"corresponds to sigma_h = {_num(summary['sigma_h_of_calibrated_threshold'])}, and the median "
                        f"d between independent models to sigma_h = {_num(summary['sigma_h_of_median_null'])}. "
                        f"References: {_e(', '.join(r['name'] for r in calibration.references))}. "
                        f"{_e(calibration.note)}</p>")
        if evidence.query is not None and calibration.q_null:
            q = evidence.query
            sections.append("<h2>q against the null distribution</h2>"
                            + _null_svg(calibration.q_null, q.q, [(f"threshold: {_num(q.threshold)}", q.threshold,
                                                                    "#117a65")], "q between independent models"))

    protocol_rows = [(key, _e(value)) for key, value in source.protocol.to_dict().items()]
    sections.append("<h2>Protocol</h2>" + _table(protocol_rows))
    identity = [
        ("source model SHA-256", f"<code>{_e(source.model.sha256)}</code>"),
        ("source architecture", _e(source.model.architecture)),
        ("suspect model SHA-256", f"<code>{_e(result.suspect_sha256)}</code>"),
        ("source fingerprint SHA-256", f"<code>{_e(fingerprint_sha256(source))}</code>"),
        ("fingerprint created", _e(source.created_at)),
        ("calibration key", _e(evidence.calibration.key if evidence.calibration is not None else "none")),
        ("report created", _e(evidence.created_at)),
    ]
    identity += [(f"{name} version", _e(version)) for name, version in evidence.versions.items()]
    sections.append("<h2>Identity and software</h2>" + _table(identity))

    style = ("body{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top;font-size:14px}th{background:#f3f3f3}"
             ".pair{display:flex;gap:16px}figure{margin:0}img{image-rendering:pixelated;border:1px solid #999}"
             "code{font-size:12px;word-break:break-all}")
    title = f"critprint evidence: {result.suspect} against {evidence.source_name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{style}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>Task {_e(result.task)}, protocol {_e(result.protocol)}. The suspect's critical image "
        "was extracted with the source's recorded protocol and seed.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
