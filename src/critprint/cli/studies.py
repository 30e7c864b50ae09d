"""Studies that ``critprint bench --study NAME`` runs instead of the benchmark plan.

``seeds``: initialisation consistency, critical images of each source model
from several seeds (see :mod:`critprint.evaluation.seeds`).

``protocol``: every setting of a grid scored on the same models and attacks
(see :mod:`critprint.evaluation.protocol_study`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.table import Table

from critprint.checks import check_choice
from critprint.cli.output import JobProgress, fail_on_errors, print_json, stdout
from critprint.errors import InvalidInputError

__all__ = ["STUDIES", "SEED_STUDY_TASKS", "DEFAULT_SEEDS", "StudyOptions", "run_study"]

STUDIES: Final[tuple[str, ...]] = ("seeds", "protocol")
"""Studies ``bench --study`` accepts."""

SEED_STUDY_TASKS: Final[tuple[str, ...]] = ("denoise", "sr")
"""Tasks of ``--study seeds`` when no ``--task`` is given (``--study protocol`` takes every task of its plan).

The two that "Fingerprinting Deep Image Restoration Models" covers.
"""

DEFAULT_SEEDS: Final[int] = 4


@dataclass(frozen=True)
class StudyOptions:
    """The ``bench`` options a study reads.

    Attributes:
        study: The study's name, or None when only a study option was given.
        out: Output folder.
        tasks: Tasks given with ``--task``.
        protocol: Base protocol preset, or None for the plan's.
        iterations: Adam steps instead of the preset's, or None.
        seeds: ``--seeds`` (study ``seeds`` only).
        settings: ``--setting`` values (study ``protocol`` only).
        quick: ``--quick`` (study ``protocol`` only: the reduced plan's models and attacks).
        other_options: Names of the given bench options no study reads.
    """

    study: str | None
    out: Path
    tasks: tuple[str, ...] = ()
    protocol: str | None = None
    iterations: int | None = None
    seeds: int | None = None
    settings: tuple[str, ...] = ()
    quick: bool = False
    other_options: tuple[str, ...] = ()


def _check(options: StudyOptions) -> str:
    if options.study is None:
        if options.seeds is not None:
            raise InvalidInputError(f"--seeds {options.seeds} applies only to a study; add --study seeds")
        raise InvalidInputError(f"--setting {options.settings[0]} applies only to a study; add --study protocol")
    check_choice("study", options.study, STUDIES)
    unused = list(options.other_options)
    if options.study == "seeds":
        unused += [flag for flag, value in (("--quick", options.quick), ("--setting", bool(options.settings)))
                   if value]
    else:
        unused += ["--seeds"] if options.seeds is not None else []
    if unused:
        raise InvalidInputError(f"{', '.join(unused)} does not apply to --study {options.study}; leave it out")
    return options.study


def run_study(options: StudyOptions, json_output: bool, quiet: bool, debug: bool) -> None:
    """Run ``bench --study``: check the options, run the study, print its table or JSON."""
    with fail_on_errors(debug), JobProgress(quiet, options.study or "study") as progress:
        study = _check(options)
        if study == "seeds":
            summary = _seeds(options, progress)
        else:
            summary = _protocol(options, progress)
    if json_output:
        print_json(summary)
        return
    if study == "seeds":
        _print_seeds(summary, options.out)
    else:
        _print_protocol(summary, options.out)


def _seeds(options: StudyOptions, progress: JobProgress) -> dict[str, Any]:
    from critprint.evaluation.seeds import run_seed_studies

    return run_seed_studies(
        options.tasks or SEED_STUDY_TASKS, options.out, DEFAULT_SEEDS if options.seeds is None else options.seeds,
        options.protocol or "quick", options.iterations, progress.update,
    )


def _protocol(options: StudyOptions, progress: JobProgress) -> dict[str, Any]:
    from critprint.evaluation import get_plan
    from critprint.evaluation.protocol_study import DEFAULT_GRIDS, run_protocol_study

    changes: dict[str, Any] = {"iterations": options.iterations}
    if options.protocol is not None:
        changes["protocol"] = options.protocol
    plan = get_plan("quick" if options.quick else "full", options.tasks or None, **changes)
    tasks = tuple(task.task for task in plan.tasks)
    settings = ({task: options.settings for task in tasks} if options.settings
                else {task: DEFAULT_GRIDS[task] for task in tasks})
    return run_protocol_study(tasks, options.out, settings, plan, progress.update)


def _print_seeds(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"critprint bench --study seeds ({summary['seeds']} seeds), {summary['seconds']:.0f} s; "
                        f"details in {out / 'seeds-summary.md'}")
    for column in ("task", "model", "within, largest", "across, smallest", "closest model"):
        table.add_column(column)
    for task, result in summary["tasks"].items():
        for entry in result["entries"]:
            table.add_row(task, entry["model"], f"{entry['within']:.3g}",
                          "n/a" if entry["across"] is None else f"{entry['across']:.3g}",
                          entry["across_model"] or "n/a")
    stdout.print(table)


def _print_protocol(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"critprint bench --study protocol, {summary['seconds']:.0f} s; "
                        f"details in {out / 'protocol-study.md'}")
    for column in ("task", "setting", "AUC", "TPR at 1 % FPR", "false positives", "smallest negative",
                   "largest positive", "cost", "chosen"):
        table.add_column(column)
    for task, result in summary["tasks"].items():
        for score in result["scores"]:
            table.add_row(task, score["setting"], f"{score['auc']:.3f}", f"{score['tpr']:.3f}",
                          f"{score['false_positives']}/{score['negatives']}",
                          f"{score['min_negative']['ratio']:.3g}", f"{score['max_positive']['ratio']:.3g}",
                          f"{score['cost']:.2g}", "yes" if score["setting"] == result["chosen"] else "")
    stdout.print(table)
