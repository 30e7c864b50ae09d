"""The benchmark: ROC arithmetic, pictures, and `critprint bench --quick` end to end."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from critprint.cli.app import app
from critprint.errors import InvalidInputError
from critprint.evaluation import get_plan
from critprint.evaluation.plan import WATERMARK_METHODS, restrict_attacks
from critprint.evaluation.metrics import roc_auc, roc_curve, summarise_roc, tpr_at_fpr
from critprint.evaluation.report import _ratio_colour, heatmap, montage
from critprint.evaluation.runner import count_jobs

runner = CliRunner()


def test_auc_counts_ties_as_half() -> None:
    # Pairs (pos, neg): 3>1, 3>2, 2>1 win; 2 == 2 ties: (3 + 0.5) / 4.
    assert roc_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert roc_auc([5.0], [1.0, 2.0]) == 1.0
    assert roc_auc([0.0], [1.0, 2.0]) == 0.0


def test_tpr_at_fpr_with_few_negatives() -> None:
    positives = [0.9, 0.8, 0.3]
    negatives = [0.5, 0.1]
    # Any threshold at or below 0.5 accepts a negative (50 % FPR), so only 0.9 and 0.8 pass.
    assert tpr_at_fpr(positives, negatives, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(positives, negatives, 0.5) == 1.0
    fpr, tpr = roc_curve(positives, negatives)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert list(fpr) == sorted(fpr)
    assert list(tpr) == sorted(tpr)


def test_roc_rejects_empty_and_non_finite_scores() -> None:
    with pytest.raises(InvalidInputError, match="at least one positive"):
        roc_auc([], [1.0])
    with pytest.raises(InvalidInputError, match="finite"):
        roc_auc([math.inf], [1.0])
    with pytest.raises(InvalidInputError, match="false-positive rate"):
        tpr_at_fpr([1.0], [0.0], 1.5)
    summary = summarise_roc([1.0, 2.0], [0.0])
    assert (summary.auc, summary.positives, summary.negatives) == (1.0, 2, 1)


def test_heatmap_colours_follow_the_threshold() -> None:
    below, above = _ratio_colour(0.1), _ratio_colour(10.0)
    # Blue to purple below 1, orange to yellow above.
    assert below[2] > below[1]
    assert above[0] > above[2]
    assert _ratio_colour(None) == (255, 255, 255)
    png = heatmap([[None, 0.5], [2.0, None]], cell=4)
    assert png.startswith(b"\x89PNG")


def test_montage_leaves_blank_tiles() -> None:
    from io import BytesIO

    from PIL import Image

    image = torch.zeros(3, 8, 8)
    picture = Image.open(BytesIO(montage([[image, None]], scale=1, gap=2)))
    assert picture.size == (2 * (8 + 2) + 2, 8 + 2 * 2)
    pixels = picture.load()
    assert pixels[3, 3] == (0, 0, 0)
    assert pixels[13, 3] == (255, 255, 255)


def test_plan_rejects_unknown_names() -> None:
    with pytest.raises(InvalidInputError, match="invalid bench plan 'huge'"):
        get_plan("huge")
    with pytest.raises(InvalidInputError, match="invalid task 'deblur'"):
        get_plan("quick", ("deblur",))
    plan = get_plan("full")
    for task in plan.tasks:
        assert len(task.sources) >= (6 if task.task in ("denoise", "sr") else 3), task
        assert len({task.sources, task.hard_negatives}) == 2


def test_plan_changes_are_checked() -> None:
    plan = get_plan("quick", ("denoise",), methods=("critprint",), iterations=50)
    assert plan.methods == ("critprint",)
    assert count_jobs(plan) == 2 * 3 + (3 + 6) + 1
    with pytest.raises(InvalidInputError, match="invalid method 'best'"):
        get_plan("quick", methods=("best",))
    with pytest.raises(InvalidInputError, match="invalid iterations 0"):
        get_plan("quick", iterations=0)


def test_plan_iterations_reach_the_protocol(tmp_path: Path) -> None:
    from critprint.evaluation.runner import _TaskRunner

    plan = get_plan("quick", ("denoise",), iterations=37)
    runner = _TaskRunner(plan, plan.tasks[0], tmp_path)
    assert runner.base_protocol.iterations == 37
    assert runner.base_protocol.size == 64


def test_full_plan_other_task_attacks() -> None:
    plan = get_plan("full", ("deblur",))
    (task,) = plan.tasks
    assert task.task == "deblur"
    assert task.scale == 1
    assert len(task.sources) == 3
    assert task.hard_negatives == ()
    assert plan.attacks_for(task) == ("prune", "quantize")
    assert plan.all_attacks == ("prune", "quantize")
    assert plan.to_dict()["tasks"][0]["attacks"] == ["prune", "quantize"]
    # calibrated and query: one job each; each watermark: 3 embeddings, 6 attacks, 1 verification job.
    assert count_jobs(plan) == 6 + 3 * (3 + 6 + 1) + 2 * (3 + 1) + 2 + 4 * (3 + 6 + 1)
    full = get_plan("full")
    assert {task.task for task in full.tasks} == {"denoise", "sr", "deblur", "lowlight", "derain", "jpeg"}
    assert full.attacks_for(full.tasks[0]) == full.attacks


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("bench")
    start = time.perf_counter()
    result = runner.invoke(app, ["bench", "--quick", "--out", str(out), "--quiet"])
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text()), seconds


def test_quick_bench_writes_the_summary(quick_bench: tuple[Path, dict, float]) -> None:
    out, summary, _ = quick_bench
    plan = get_plan("quick")
    assert set(summary["tasks"]) == {"denoise", "sr"}
    for task in plan.tasks:
        task_summary = summary["tasks"][task.task]
        assert task_summary["failures"] == []
        references = len(task.references)
        for method in plan.methods:
            entry = task_summary["methods"][method]
            assert entry["positives"] == len(task.sources) * len(plan.attacks)
            # A fingerprint compares every ordered pair of references; a watermark key checks every reference.
            watermark = method in WATERMARK_METHODS
            assert entry["negatives"] == (len(task.sources) * references if watermark else references * (references - 1))
            assert 0.0 <= entry["auc"] <= 1.0
            assert 0.0 <= entry["tpr_at_1pct_fpr"] <= 1.0
            assert set(entry["success_rate"]) == set(plan.attacks)
            assert all(0.0 <= rate <= 1.0 for rate in entry["success_rate"].values())
            assert entry["min_offdiag_ratio"] > 0
            if not watermark:
                # Every pair of sources and of hard negatives is a negative, so neither minimum is below this one.
                assert 0 < entry["min_negative_ratio"] <= entry["min_offdiag_ratio"]
                assert entry["min_hard_negative_ratio"] is None or (
                    entry["min_negative_ratio"] <= entry["min_hard_negative_ratio"])
        # The IPGuard threshold is set so that every pair of sources is distinguished.
        for method in ("projcl", "poolcl"):
            assert task_summary["methods"][method]["min_offdiag_ratio"] >= 1.0
        assert len(task_summary["attacks"]) == len(task.sources) * len(plan.attacks)
        for name in ("matrix-sources.png", "montage.png"):
            assert (out / task.task / name).read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "### Robustness" in report
    assert "TPR at 1 % FPR" in report
    assert "### Paper rule, calibrated rule and query-only" in report


def test_quick_bench_scores_calibrated_and_query(quick_bench: tuple[Path, dict, float]) -> None:
    out, summary, _ = quick_bench
    for task, task_summary in summary["tasks"].items():
        methods = task_summary["methods"]
        # -log10 d orders the pairs as -log10(d / eta) does, so the ROC is the same.
        assert methods["calibrated"]["auc"] == pytest.approx(methods["critprint"]["auc"])
        assert set(methods["query"]["per_attack"]) == {"prune", "finetune", "quantize"}
        calibration = json.loads((out / task / "calibration.json").read_text())
        assert len(calibration["d_null"]) == 3
        assert len(calibration["q_null"]) == 6
        assert task_summary["calibration"]["d"]["n"] == 3
        assert set(task_summary["sigma_h_of_attacked_copies"]) == {"prune", "finetune", "quantize"}


def test_quick_bench_pairs_agree_with_the_summary(quick_bench: tuple[Path, dict, float]) -> None:
    out, summary, _ = quick_bench
    pairs = json.loads((out / "pairs.json").read_text())
    for task, task_summary in summary["tasks"].items():
        for method, entry in task_summary["methods"].items():
            rows = [row for row in pairs if row["task"] == task and row["method"] == method]
            assert all((row["ratio"] < 1) == row["derived"] for row in rows if method in ("critprint", "maxobj", "no-tv"))
            prune = [row["derived"] for row in rows if row["attack"] == "prune"]
            assert entry["success_rate"]["prune"] == pytest.approx(sum(prune) / len(prune))


def test_quick_bench_reuses_finished_work(quick_bench: tuple[Path, dict, float]) -> None:
    out, summary, first_seconds = quick_bench
    start = time.perf_counter()
    result = runner.invoke(app, ["bench", "--quick", "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert time.perf_counter() - start < first_seconds / 2
    for task in summary["tasks"]:
        assert again["tasks"][task]["methods"] == summary["tasks"][task]["methods"]


def test_bench_rejects_a_task_outside_the_plan(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--quick", "--task", "deblur", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "invalid task 'deblur': expected one of 'denoise', 'sr'" in result.stderr


def test_quick_bench_runs_the_watermarks(quick_bench: tuple[Path, dict, float]) -> None:
    out, summary, _ = quick_bench
    pairs = json.loads((out / "pairs.json").read_text())
    for task in get_plan("quick").tasks:
        task_summary = summary["tasks"][task.task]
        assert {record["method"] for record in task_summary["watermarks"]} == set(WATERMARK_METHODS)
        assert len(task_summary["watermarks"]) == 4 * len(task.sources)
        assert len(task_summary["watermark_attacks"]) == 4 * len(task.sources) * 3
        for record in task_summary["watermarks"]:
            assert math.isfinite(record["psnr_change_db"])
            assert record["threshold"] == 51 / 64
            assert (out / task.task / "watermarks" / record["method"] / f"{record['source']}.key").exists()
        assert task_summary["methods"]["critprint"]["psnr_change_db"] == 0.0
        for method in WATERMARK_METHODS:
            entry = task_summary["methods"][method]
            changes = [r["psnr_change_db"] for r in task_summary["watermarks"] if r["method"] == method]
            assert entry["psnr_change_db"] == pytest.approx(sum(changes) / len(changes))
            rows = [row for row in pairs if row["task"] == task.task and row["method"] == method]
            # Each key is checked on the source's own unwatermarked original, a negative.
            assert {(row["source"], row["suspect"]) for row in rows if row["kind"] == "negative"} >= {
                (source, source) for source in task.sources
            }
            assert all(row["derived"] == (row["value"] >= 51 / 64) for row in rows)
    report = (out / "report.md").read_text()
    assert "| attack | source | critprint |" in report
    assert "Zhang | Quan | Ong | WeakWM |" in report
    assert "| PSNR change (dB) | 0 |" in report
    assert "### Watermarked sources" in report


def test_plan_restricted_to_sources_and_attacks() -> None:
    plan = get_plan("full", ("denoise",), ("compact-dn", "dncnn"), methods=("quan",))
    (task,) = plan.tasks
    assert task.sources == ("dncnn", "compact-dn")
    assert "nafnet" in task.compared_sources
    assert "nafnet" in task.references
    assert "nafnet" not in task.hard_negatives
    plan = restrict_attacks(plan, ("prune", "quantize"))
    assert plan.attacks_for(plan.tasks[0]) == ("prune", "quantize")
    # Only watermarks: no attacks on the unwatermarked sources.
    assert count_jobs(plan) == 2 + 2 * 2 + 1
    with pytest.raises(InvalidInputError, match="invalid source model 'dncnn-h'"):
        get_plan("full", ("denoise",), ("dncnn-h",))
    with pytest.raises(InvalidInputError, match="invalid attack 'melt'"):
        restrict_attacks(plan, ("melt",))
    with pytest.raises(InvalidInputError, match="invalid watermark_steps 0"):
        get_plan("quick", watermark_steps=0)


def test_bench_rejects_a_source_outside_the_plan(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--quick", "--source", "nafnet", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "invalid source model 'nafnet': expected one of 'dncnn', 'compact-dn'" in result.stderr
    result = runner.invoke(app, ["bench", "--quick", "--attack", "distill", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "invalid attack 'distill': expected one of 'prune', 'finetune', 'quantize'" in result.stderr
