"""The benchmark scripts run end to end at toy sizes, so they do not rot between measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from critprint.protocol import DEFAULT_PROTOCOL

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *arguments: str) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *arguments, "--json"],
        capture_output=True, text=True, check=True, env=environment, timeout=600,
    )
    return json.loads(completed.stdout)


def test_gpu_check_runs_on_cpu() -> None:
    result = run_script("gpu_check.py", "--device", "cpu", "--models", "compact-x4", "--iterations", "3")
    rows = result["rows"]
    assert [row["variant"] for row in rows[:3]] == ["float32", "bfloat16", "bfloat16-channels-last"]
    assert {row["protocol"] for row in rows} == {DEFAULT_PROTOCOL, "paper"}
    assert all(row["iterations_per_second"] > 0 for row in rows)
    assert rows[0]["ratio_to_float32"] == 0.0


def test_extraction_benchmark_reports_ratios() -> None:
    result = run_script(
        "extraction.py", "--models", "compact-x4", "--iterations", "2", "--rounds", "1",
        "--paper-sample", "3", "--registry-size", "50", "--threads", "1",
    )
    (overhead,) = result["overhead"]
    assert overhead["overhead_ratio"] > 0
    (fingerprint,) = result["fingerprint"]
    # The paper preset is 128 x 128 for 5000 steps, the default 64 x 64 for 500.
    assert fingerprint["speedup"] > 1
    assert fingerprint["default_process_peak_rss_mb"] > 0
    assert fingerprint["paper_extraction_mb"] >= 0
    assert fingerprint["paper_extrapolated_from_iterations"] == 3
    assert result["identify"]["fingerprints"] == 50


def test_study_scripts_run_on_the_quick_plan(tmp_path: Path) -> None:
    toy = ("--quick", "--iterations", "3")
    holdout = run_script("study_holdout.py", str(tmp_path), "--task", "denoise", *toy)
    (result,) = holdout
    assert [fold["source"] for fold in result["folds"]] == ["dncnn", "compact-dn"]
    assert result["held_out"]["positives"] == 6
    # The second script reads the fingerprints the first one extracted.
    rows = run_script("residual_features.py", str(tmp_path), "denoise", "base", *toy)
    assert [row["features"] for row in rows][:2] == ["critical image", "output"]
    assert all(row["positives"] == 6 and row["negatives"] == 6 for row in rows)
    lengths = {row["features"]: row["length"] for row in rows}
    assert lengths["critical image + output"] == 2 * lengths["critical image"] == 60
