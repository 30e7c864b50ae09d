"""Studies that ``critprint bench --study NAME`` runs instead of the benchmark plan.

``seeds``: initialisation consistency, critical images of each source model
from several seeds (see :mod:`critprint.evaluation.seeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from rich.table import Table

from critprint.checks import check_choice
from critprint.cli.output import JobProgress, fail_on_errors, print_json, stdout
from critprint.errors import InvalidInputError

__all__ = ["STUDIES", "SEED_STUDY_TASKS", "DEFAULT_SEEDS", "run_study"]

STUDIES: Final[tuple[str, ...]] = ("seeds",)
"""Studies ``bench --study`` accepts."""

SEED_STUDY_TASKS: Final[tuple[str, ...]] = ("denoise", "sr")
"""Tasks of ``--study seeds`` when no ``--task`` is given.

The two that "Fingerprinting Deep Image Restoration Models" covers.
"""

DEFAULT_SEEDS: Final[int] = 4


def run_study(
    study: str | None,
    seeds: int | None,
    out: Path,
    tasks: Sequence[str] | None,
    protocol: str | None,
    iterations: int | None,
    other_options: Sequence[str],
    json_output: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Run ``bench --study``: check the options, run the study, print its table or JSON.

    ``other_options`` names the bench options given that a study does not use;
    any of them is an error, so that none is silently ignored.
    """
    from critprint.evaluation.seeds import run_seed_studies

    with fail_on_errors(debug), JobProgress(quiet, "seeds") as progress:
        if study is None:
            raise InvalidInputError(f"--seeds {seeds} applies only to a study; add --study seeds")
        check_choice("study", study, STUDIES)
        if other_options:
            raise InvalidInputError(
                f"{', '.join(other_options)} does not apply to --study {study}; leave it out"
            )
        summary = run_seed_studies(
            tuple(tasks) if tasks else SEED_STUDY_TASKS, out, DEFAULT_SEEDS if seeds is None else seeds,
            protocol or "quick", iterations, progress.update,
        )
    if json_output:
        print_json(summary)
        return
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
