"""The benchmark behind ``critprint bench``: the experiments of "Fingerprinting Deep Image Restoration Models" and more.

:func:`run_bench` runs a plan (see :mod:`critprint.evaluation.plan`) over the
evaluation zoo and writes ``summary.json``, ``pairs.json``, ``report.md`` and
pictures to an output folder. It goes through the same api the command line
uses, so every number measures what a user runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from critprint.evaluation.plan import ATTACK_NAMES, METHODS, BenchPlan, TaskPlan, get_plan
from critprint.evaluation.report import run_metadata, write_outputs
from critprint.evaluation.runner import BenchProgress, count_jobs, run_task

__all__ = ["run_bench", "get_plan", "BenchPlan", "TaskPlan", "METHODS", "ATTACK_NAMES", "BenchProgress"]

logger = logging.getLogger(__name__)


def run_bench(plan: BenchPlan, out_dir: str | Path, progress: BenchProgress | None = None) -> dict[str, Any]:
    """Run a benchmark plan and write its outputs under ``out_dir``.

    Work already done in ``out_dir`` by an earlier run of the same plan is
    reused, so an interrupted run can be started again.

    Returns:
        The summary, as written to ``out_dir/summary.json``.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    total = count_jobs(plan)
    done = 0
    runs = []
    for task in plan.tasks:
        run = run_task(plan, task, folder, progress, done_before=done, total=total)
        done += len(run.seconds)
        runs.append(run)
    if progress is not None:
        progress(total, total, "done")
    extra = run_metadata(start)
    summary = write_outputs(plan, runs, folder, extra)
    logger.info("benchmark %s finished in %.0f s", plan.name, extra["seconds"])
    return summary
