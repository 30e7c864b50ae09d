"""Turn what a benchmark measured into a summary, tables and pictures.

Per task and method the summary contains the ROC area, the true-positive rate
at the plan's false-positive rate, the success rate per attack, the smallest
ratio between different source models and the pair counts. The Markdown report
contains the tables of "Fingerprinting Deep Image Restoration Models"
(discriminability matrices, robustness, ablation) and the ROC table. The
pictures are the matrices as heat maps and a montage of critical images.
"""

from __future__ import annotations

import io
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from critprint.evaluation.metrics import summarise_roc
from critprint.evaluation.plan import WATERMARK_METHODS, BenchPlan
from critprint.evaluation.runner import PairScore, TaskRun, attacked_name
from critprint.fingerprint import atomic_write_bytes, now_utc, software_versions
from critprint.images import to_uint8

__all__ = ["summarise_task", "ratio_matrix", "heatmap", "montage", "render_markdown", "write_outputs"]

_METHOD_LABELS = {
    "critprint": "critprint",
    "calibrated": "critprint, calibrated",
    "query": "query-only",
    "maxobj": "MaxObj",
    "no-tv": "w/o TV",
    "projcl": "ProjCL",
    "poolcl": "PoolCL",
    "zhang": "Zhang",
    "quan": "Quan",
    "ong": "Ong",
    "weakwm": "WeakWM",
}


def _pairs(run: TaskRun, method: str, kind: str | None = None) -> list[PairScore]:
    return [pair for pair in run.pairs if pair.method == method and (kind is None or pair.kind == kind)]


def ratio_matrix(run: TaskRun, method: str, models: Sequence[str]) -> list[list[float | None]]:
    """Return the ratio of every (row source, column suspect) negative pair; None on the diagonal or when missing."""
    lookup = {(pair.source, pair.suspect): pair.ratio for pair in _pairs(run, method, "negative")}
    return [[None if row == column else lookup.get((row, column)) for column in models] for row in models]


def run_metadata(start: float) -> dict[str, Any]:
    """Return when a run finished, its seconds since ``start`` (a ``time.perf_counter`` value), the machine and versions."""
    return {
        "created_at": now_utc(),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.system()}",
        "versions": software_versions(),
    }


def _min_offdiag(matrix: list[list[float | None]]) -> float | None:
    values = [value for row in matrix for value in row if value is not None]
    return min(values) if values else None


def summarise_task(run: TaskRun, plan: BenchPlan) -> dict[str, Any]:
    """Return the summary of one task: per method, the ROC, success rates and the smallest off-diagonal ratio."""
    methods: dict[str, Any] = {}
    for method in plan.methods:
        positives = _pairs(run, method, "positive")
        negatives = _pairs(run, method, "negative")
        entry: dict[str, Any] = {"positives": len(positives), "negatives": len(negatives)}
        if positives and negatives:
            roc = summarise_roc([p.score for p in positives], [p.score for p in negatives], plan.fpr)
            entry |= {"auc": roc.auc, "tpr_at_1pct_fpr": roc.tpr_at_fpr}
        else:
            entry |= {"auc": None, "tpr_at_1pct_fpr": None}
        entry["success_rate"] = {
            attack: _rate([p.derived for p in positives if p.attack == attack]) for attack in plan.attacks_for(run.plan)
        }
        entry["false_positive_rate"] = _rate([p.derived for p in negatives])
        entry["min_offdiag_ratio"] = _min_offdiag(ratio_matrix(run, method, run.plan.sources))
        hard = run.plan.hard_negatives
        entry["min_hard_negative_ratio"] = _min_offdiag(ratio_matrix(run, method, hard)) if hard else None
        entry["min_negative_ratio"] = min((p.ratio for p in negatives), default=None)
        entry["per_attack"] = {}
        for attack in plan.attacks_for(run.plan):
            attacked = [p.score for p in positives if p.attack == attack]
            if attacked and negatives:
                roc = summarise_roc(attacked, [p.score for p in negatives], plan.fpr)
                entry["per_attack"][attack] = {"auc": roc.auc, "tpr_at_1pct_fpr": roc.tpr_at_fpr}
        if method in run.thresholds:
            entry["match_rate_threshold"] = run.thresholds[method]
        entry["false_positives"] = [
            {"source": p.source, "suspect": p.suspect, "ratio": p.ratio} for p in negatives if p.derived
        ]
        entry |= _fidelity(run, method)
        methods[method] = entry
    spread = {}
    for attack in plan.attacks_for(run.plan):
        distances = [p.value for p in _pairs(run, "calibrated", "positive") if p.attack == attack]
        if distances:
            spread[attack] = math.sqrt(sum(distances) / len(distances))
    return {
        "sources": list(run.plan.sources),
        "hard_negatives": list(run.plan.hard_negatives),
        "calibration": run.calibration or None,
        "sigma_h_of_attacked_copies": spread,
        "attack_names": list(plan.attacks_for(run.plan)),
        "seconds": round(sum(run.seconds.values()), 1),
        "methods": methods,
        "attacks": run.attacks,
        "watermarks": run.watermarks,
        "watermark_attacks": run.watermark_attacks,
        "failures": run.failures,
    }


def _fidelity(run: TaskRun, method: str) -> dict[str, Any]:
    """Return what a method costs the models: 0 dB for a fingerprint, the watermarks' PSNR changes otherwise."""
    if method not in WATERMARK_METHODS:
        return {"psnr_change_db": 0.0, "worst_psnr_change_db": 0.0, "unattacked_verified": None}
    records = [record for record in run.watermarks if record["method"] == method]
    changes = [record["psnr_change_db"] for record in records]
    return {
        "psnr_change_db": sum(changes) / len(changes) if changes else None,
        "worst_psnr_change_db": min(changes) if changes else None,
        "unattacked_verified": _rate([record["verified"] for record in records]),
    }


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# Pictures ------------------------------------------------------------------


def _ratio_colour(ratio: float | None) -> tuple[int, int, int]:
    """Return the colour of one matrix cell: purple to blue below 1, orange to yellow above, as in Figure 5 of "Fingerprinting Deep Image Restoration Models"."""
    if ratio is None:
        return (255, 255, 255)
    level = min(max(math.log10(max(ratio, 1e-6)), -3.0), 3.0) / 3.0
    if level < 0:
        start, end, t = (128, 0, 160), (30, 60, 220), -level
    else:
        start, end, t = (240, 130, 20), (250, 230, 40), level
    return tuple(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))  # type: ignore[return-value]


def heatmap(matrix: list[list[float | None]], cell: int = 24) -> bytes:
    """Render a ratio matrix as PNG bytes; white cells are the diagonal."""
    size = len(matrix)
    pixels = np.zeros((size * cell, size * cell, 3), dtype=np.uint8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            pixels[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = _ratio_colour(value)
    return _png(pixels)


def montage(rows: Sequence[Sequence[torch.Tensor | None]], scale: int = 2, gap: int = 4) -> bytes:
    """Tile critical images (C, H, W) into a grid as PNG bytes; None leaves a blank tile."""
    sample = next(image for row in rows for image in row if image is not None)
    height, width = sample.shape[-2] * scale, sample.shape[-1] * scale
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) + gap, columns * (width + gap) + gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            if image is None:
                continue
            tile = to_uint8(image)
            if tile.ndim == 2:
                tile = np.repeat(tile[..., None], 3, axis=2)
            tile = np.kron(tile, np.ones((scale, scale, 1), dtype=np.uint8))
            top, left = gap + i * (height + gap), gap + j * (width + gap)
            canvas[top : top + height, left : left + width] = tile[:height, :width]
    return _png(canvas)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# Markdown --------------------------------------------------------------------


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.01):
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _matrix_lines(run: TaskRun, method: str, models: Sequence[str]) -> list[str]:
    matrix = ratio_matrix(run, method, models)
    rows = [[f"**{name}**"] + ["-" if v is None else _number(v) for v in row] for name, row in zip(models, matrix, strict=True)]
    return _table(["source \\ suspect", *models], rows)


def render_markdown(plan: BenchPlan, runs: Sequence[TaskRun], summary: dict[str, Any]) -> str:
    """Render the benchmark report as Markdown."""
    lines = [f"# critprint benchmark ({plan.name} plan)", ""]
    iterations = "" if plan.iterations is None else f" with {plan.iterations} iterations"
    lines += [
        f"Protocol preset `{plan.protocol}`{iterations}; attacks: {', '.join(plan.all_attacks)}; fine-tuning "
        f"{plan.finetune_steps} steps, distillation {plan.distill_steps} steps; IPGuard "
        f"{plan.ipguard_points} points, {plan.ipguard_iterations} search steps.",
        "Ratios are d / eta for the critical-image methods, (1 - match rate) / (1 - threshold) "
        "for the IPGuard baselines and (1 - bit accuracy) / (1 - threshold) for the watermarks: below 1 means "
        "the suspect is judged derived (for a watermark: the key's bits are read from it).",
        "",
    ]
    for run in runs:
        task = run.plan.task
        task_summary = summary["tasks"][task]
        attacks = plan.attacks_for(run.plan)
        methods = plan.methods
        lines += [f"## {task}", ""]
        if "critprint" in methods:
            lines += ["### Discriminability (critprint, d / eta between source models)", ""]
            lines += _matrix_lines(run, "critprint", run.plan.sources)
            lines += ["", f"![{task} sources]({task}/matrix-sources.png)", ""]
        if run.plan.hard_negatives and "critprint" in methods:
            lines += ["### Hard negatives (critprint, same architecture, other photos or seeds)", ""]
            lines += _matrix_lines(run, "critprint", run.plan.hard_negatives)
            lines += ["", f"![{task} hard negatives]({task}/matrix-hard-negatives.png)", ""]

        lines += ["### Attacks", ""]
        rows = []
        for outcome in run.attacks + run.watermark_attacks:
            rows.append([
                outcome["model"], outcome["parameter"], _number(outcome["strength"]),
                f"{outcome['psnr_before_db']:.2f}", f"{outcome['psnr_change_db']:+.2f}",
                "yes" if outcome["within_budget"] else "**no**",
            ])
        lines += _table(["attacked copy", "parameter", "strength", "PSNR before (dB)", "change (dB)", "within 1 dB"], rows)

        lines += _watermark_lines(run, plan)
        lines += ["", "### Robustness (ratio per method; below 1 = verified)", ""]
        rows = []
        for attack in attacks:
            for source in run.plan.sources:
                suspect = attacked_name(source, attack)
                cells = []
                for method in methods:
                    match = [p for p in run.pairs if p.method == method and p.source == source and p.suspect == suspect]
                    cells.append("n/a" if not match else f"{_number(match[0].ratio)} {'✓' if match[0].derived else '✗'}")
                rows.append([attack, source, *cells])
        lines += _table(["attack", "source", *(_METHOD_LABELS[m] for m in methods)], rows)
        lines += ["", "Success rate per attack:", ""]
        rows = []
        for attack in attacks:
            cells = [_fraction(run, method, attack) for method in methods]
            rows.append([attack, *cells])
        rows.append(["false positives", *(_negatives(run, method) for method in methods)])
        rows.append(["PSNR change (dB)", *(_psnr_cell(task_summary["methods"][method]) for method in methods)])
        lines += _table(["attack", *(_METHOD_LABELS[m] for m in methods)], rows)
        lines += ["", "False positives: unattacked references judged derived (for a watermark: references "
                  "without it, the source's original included). PSNR change: mean over the watermarked sources "
                  "on the held-out crop, worst in brackets; a fingerprint changes no weight.", ""]

        lines += ["", "### Ablation and ROC", ""]
        rows = []
        for method in methods:
            entry = task_summary["methods"][method]
            rows.append([
                _METHOD_LABELS[method], _number(entry["auc"]), _number(entry["tpr_at_1pct_fpr"]),
                _number(entry["min_offdiag_ratio"]), _number(entry["min_hard_negative_ratio"]),
                _number(entry["min_negative_ratio"]), _number(entry["false_positive_rate"]),
                str(entry["positives"]), str(entry["negatives"]),
            ])
        lines += _table(["method", "AUC", "TPR at 1 % FPR", "min ratio, sources", "min ratio, hard negatives",
                         "min ratio, any two models", "false-positive rate", "positives", "negatives"], rows)
        if "critprint" in methods:
            lines += ["", *_false_positive_lines(task_summary["methods"]["critprint"])]
        lines += _rule_lines(run, plan, task_summary)
        if "critprint" in methods:
            lines += ["", f"![{task} critical images]({task}/montage.png)", "",
                      "Montage rows: " + ", ".join(run.plan.sources) + "; columns: the source, then "
                      + ", ".join(attacks) + ".", ""]
        if run.failures:
            lines += ["### Failures", ""] + [f"- {item['job']}: {item['error']}" for item in run.failures] + [""]
    return "\n".join(lines)


_RULES = ("critprint", "calibrated", "query")


def _rule_lines(run: TaskRun, plan: BenchPlan, task_summary: dict[str, Any]) -> list[str]:
    """Compare the paper rule, the calibrated rule and query-only: ROC per attack and the rules' error rates."""
    rules = [rule for rule in _RULES if rule in plan.methods]
    if len(rules) < 2:
        return []
    methods = task_summary["methods"]
    lines = ["", "### Paper rule, calibrated rule and query-only", "",
             f"AUC and TPR at {plan.fpr:g} FPR of each attack's copies against all {methods[rules[0]]['negatives']} "
             "negative pairs; the last two columns are the rates of the rule's own threshold (paper: d < eta; "
             "calibrated and query-only: below the FPR quantile of the other independent pairs).", ""]
    rows = []
    for rule in rules:
        entry = methods[rule]
        for attack in plan.attacks_for(run.plan):
            cell = entry["per_attack"].get(attack)
            rows.append([_METHOD_LABELS[rule], attack, _number(cell["auc"] if cell else None),
                         _number(cell["tpr_at_1pct_fpr"] if cell else None), _fraction(run, rule, attack), ""])
        rows.append([_METHOD_LABELS[rule], "all", _number(entry["auc"]), _number(entry["tpr_at_1pct_fpr"]),
                     f"{sum(p.derived for p in _pairs(run, rule, 'positive'))}/{entry['positives']}",
                     _number(entry["false_positive_rate"])])
    lines += _table(["rule", "attack", "AUC", "TPR at 1 % FPR", "judged derived", "false-positive rate"], rows)
    calibration = task_summary.get("calibration")
    if calibration:
        d = calibration["d"]
        lines += ["", f"Null sample of d: {d['n']} pairs of independent references. Threshold at FPR {plan.fpr:g}: "
                  f"{_number(d['threshold'])} (empirical {_number(d['empirical'])}, log-normal fit "
                  f"{_number(d['fitted'])}); the paper's eta is {_number(calibration['paper_eta'])}. In the paper's "
                  f"terms the calibrated threshold is sigma_h = {_number(calibration['sigma_h_of_calibrated_threshold'])}"
                  f" and the median independent pair sigma_h = {_number(calibration['sigma_h_of_median_null'])}, "
                  f"against the assumed {_number(calibration['paper_sigma_h'])}."]
        spread = task_summary.get("sigma_h_of_attacked_copies") or {}
        if spread:
            lines += ["", "sqrt(mean d) of the attacked copies (the per-bin error the paper models as sigma_h): "
                      + ", ".join(f"{attack} {_number(value)}" for attack, value in spread.items()) + "."]
        if calibration.get("q"):
            q = calibration["q"]
            lines += ["", f"Null sample of q: {q['n']} ordered pairs. Threshold at FPR {plan.fpr:g}: "
                      f"{_number(q['threshold'])} (empirical {_number(q['empirical'])}, log-normal fit "
                      f"{_number(q['fitted'])})."]
    return lines


def _negatives(run: TaskRun, method: str) -> str:
    flags = [p.derived for p in _pairs(run, method, "negative")]
    return f"{sum(flags)}/{len(flags)}" if flags else "n/a"


def _psnr_cell(entry: dict[str, Any]) -> str:
    mean, worst = entry.get("psnr_change_db"), entry.get("worst_psnr_change_db")
    if mean is None:
        return "n/a"
    return "0" if mean == 0 and worst == 0 else f"{mean:+.2f} ({worst:+.2f})"


def _watermark_lines(run: TaskRun, plan: BenchPlan) -> list[str]:
    """List each watermarked source: its PSNR change and the bit accuracy of the unattacked copy."""
    if not run.watermarks:
        return []
    lines = ["", "### Watermarked sources", "",
             f"Each watermark: {plan.watermark_steps} embedding steps. PSNR change of the watermarked model on the "
             "held-out crop, and the bit accuracy its key reads from it before any attack.", ""]
    rows = [[_METHOD_LABELS[record["method"]], record["source"], f"{record['psnr_before_db']:.2f}",
             f"{record['psnr_change_db']:+.3f}", f"{record['accuracy']:.3f}", f"{record['threshold']:.3f}",
             "yes" if record["verified"] else "**no**"] for record in run.watermarks]
    return lines + _table(["method", "source", "PSNR before (dB)", "change (dB)", "bit accuracy", "threshold",
                           "verified"], rows)


def _false_positive_lines(entry: dict[str, Any]) -> list[str]:
    """List the pairs of different models that critprint judged derived."""
    wrong = entry["false_positives"]
    lines = [f"critprint judged {len(wrong)} of {entry['negatives']} pairs of different models derived."]
    lines += [f"- {item['source']} vs {item['suspect']}: d / eta = {_number(item['ratio'])}" for item in wrong]
    return lines


def _fraction(run: TaskRun, method: str, attack: str) -> str:
    flags = [p.derived for p in run.pairs if p.method == method and p.kind == "positive" and p.attack == attack]
    return f"{sum(flags)}/{len(flags)}" if flags else "n/a"


def write_outputs(plan: BenchPlan, runs: Sequence[TaskRun], out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json, pairs.json, report.md and the pictures; return the summary."""
    summary: dict[str, Any] = {**extra, "plan": plan.to_dict(), "tasks": {}}
    for run in runs:
        summary["tasks"][run.plan.task] = summarise_task(run, plan)
        folder = out_dir / run.plan.task
        if "critprint" not in plan.methods:
            continue
        atomic_write_bytes(folder / "matrix-sources.png", heatmap(ratio_matrix(run, "critprint", run.plan.sources)))
        if run.plan.hard_negatives:
            atomic_write_bytes(folder / "matrix-hard-negatives.png",
                               heatmap(ratio_matrix(run, "critprint", run.plan.hard_negatives)))
        images = run.images.get("critprint", {})
        if images:
            rows = [[images.get(source)] + [images.get(attacked_name(source, a)) for a in plan.attacks_for(run.plan)]
                    for source in run.plan.sources]
            if any(image is not None for row in rows for image in row):
                atomic_write_bytes(folder / "montage.png", montage(rows))
    pairs = [pair.__dict__ | {"task": run.plan.task} for run in runs for pair in run.pairs]
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "pairs.json", (json.dumps(pairs, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / "report.md", render_markdown(plan, runs, summary).encode())
    return summary
