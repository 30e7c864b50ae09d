"""Leave-one-source-out check of the protocol study's choice: does the pick hold on a source it never saw?

Usage: python benchmarks/study_holdout.py STUDY_DIR [--task TASK ...] [--quick] [--iterations N] [--json]

STUDY_DIR is the folder of a finished ``critprint bench --study protocol``
run. For each source of a task, the study's rule picks a setting from the
built-in grid on the pairs without that source, and the pick is judged on the
pairs with it. The script prints the pick per fold and the pooled held-out
AUC, TPR at 1 % FPR and counts under d < eta, beside the same pooled pairs
judged with the setting chosen on all pairs. Every extraction comes from the
study's cache, so a finished study makes this a matter of seconds per task.
``--quick`` and ``--iterations`` select the plan as they do for ``critprint
bench``; they must match the study's.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from critprint.evaluation.plan import get_plan
from critprint.evaluation.protocol_study import leave_one_source_out

TASKS = ("denoise", "sr", "deblur", "lowlight", "derain", "jpeg")


def _row(task: str, label: str, setting: str, pooled: dict[str, Any]) -> str:
    return (f"| {task} | {label} | `{setting}` | {pooled['auc']:.3f} | {pooled['tpr']:.3f} | "
            f"{pooled['derived_positives']}/{pooled['positives']} | {pooled['false_positives']}/{pooled['negatives']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--task", action="append", choices=TASKS, help="Task to check; repeat for several.")
    parser.add_argument("--quick", action="store_true", help="Use the reduced plan, as bench --quick does.")
    parser.add_argument("--iterations", type=int, help="Override the protocol's number of Adam steps.")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = tuple(arguments.task or TASKS)
    plan = get_plan("quick" if arguments.quick else "full", tasks, iterations=arguments.iterations)
    results = [leave_one_source_out(task.task, arguments.study_dir, plan=plan) for task in plan.tasks]
    if arguments.json:
        print(json.dumps(results, indent=2))
        return
    print("| task | choice | setting | AUC | TPR at 1 % FPR | positives derived | negatives derived |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        picks = sorted({fold["chosen"] for fold in result["folds"]})
        print(_row(result["task"], "held out", " / ".join(picks), result["held_out"]))
        print(_row(result["task"], "all pairs", result["in_sample_setting"], result["in_sample"]))
    print()
    for result in results:
        for fold in result["folds"]:
            print(f"{result['task']}: without {fold['source']}: {fold['chosen']}, "
                  f"{fold['derived_positives']}/{fold['positives']} copies derived, "
                  f"{fold['false_positives']}/{fold['negatives']} negatives derived")


if __name__ == "__main__":
    main()
