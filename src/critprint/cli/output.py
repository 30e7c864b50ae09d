"""Console output of the command-line interface: progress bars, tables, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from critprint.api import Verification
from critprint.errors import CritprintError
from critprint.extraction import ProgressCallback

__all__ = [
    "stdout",
    "stderr",
    "ExtractionProgress",
    "JobProgress",
    "print_json",
    "verification_table",
    "usage_error",
    "fail_on_errors",
]

# Rich wraps at 80 columns when output is not a terminal; tables of paths and
# hashes read better unwrapped in logs and CI output.
_PIPE_WIDTH = 160

stdout = Console(highlight=False, soft_wrap=True)
if not stdout.is_terminal:
    stdout = Console(highlight=False, soft_wrap=True, width=_PIPE_WIDTH)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on standard output."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


class ExtractionProgress:
    """Progress bars for extractions, on standard error.

    Disabled with ``quiet`` or when standard error is not a terminal.
    """

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and stderr.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=not self.enabled,
            transient=False,
        )

    def __enter__(self) -> ExtractionProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def callback(self, label: str) -> ProgressCallback | None:
        """Return a callback that drives a new bar called ``label``, or None when disabled."""
        if not self.enabled:
            return None
        task_id = self._progress.add_task(label, total=None, loss="-")

        def update(step: int, total: int, loss: float) -> None:
            self._progress.update(task_id, completed=step, total=total, loss=f"{loss:.4g}")

        return update


class JobProgress:
    """One progress bar over the jobs of a long run, on standard error.

    Disabled with ``quiet`` or when standard error is not a terminal.
    """

    def __init__(self, quiet: bool, label: str) -> None:
        self.enabled = not quiet and stderr.is_terminal
        self._label = label
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=not self.enabled,
            transient=False,
        )
        self._task_id = self._progress.add_task(label, total=None)

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, done: int, total: int, label: str) -> None:
        """Show ``done`` of ``total`` jobs, with the current job's label."""
        self._progress.update(self._task_id, completed=done, total=total, description=f"{self._label}: {label}")

    def note(self, label: str) -> None:
        """Show what the run is doing when the number of jobs is unknown."""
        self._progress.update(self._task_id, description=f"{self._label}: {label}")


def verification_table(
    rows: list[Verification], title: str | None = None, labels: list[str] | None = None
) -> Table:
    """Return a table of verifications: suspect, source, d, eta, d/eta, P and verdict.

    ``labels`` replaces the suspects' sources in the first column.
    """
    table = Table(title=title)
    table.add_column("suspect")
    table.add_column("source")
    table.add_column("d", justify="right")
    table.add_column("eta", justify="right")
    table.add_column("d/eta", justify="right")
    table.add_column("P[Z<=z]", justify="right")
    table.add_column("verdict")
    names = labels if labels is not None else [row.suspect for row in rows]
    for row, name in zip(rows, names, strict=True):
        colour = "red" if row.verdict == "derived" else "green"
        table.add_row(
            name,
            row.source,
            f"{row.distance:.3e}",
            f"{row.threshold:.3e}",
            f"{row.ratio:.3f}",
            f"{row.probability:.3g}",
            f"[{colour}]{row.verdict}[/{colour}]",
        )
    return table


def usage_error(message: str) -> NoReturn:
    """Print a usage error on standard error and exit with status 2."""
    stderr.print(f"error: {message} (see --help)", markup=False)
    raise typer.Exit(code=2)


@contextmanager
def fail_on_errors(debug: bool) -> Iterator[None]:
    """Turn user-caused errors into one line on standard error and exit status 1.

    With ``debug`` the exception propagates with its traceback.
    """
    try:
        yield
    except (CritprintError, OSError) as error:
        if debug:
            raise
        message = str(error)
        if isinstance(error, OSError) and not isinstance(error, CritprintError):
            location = f" {error.filename}" if error.filename else ""
            message = f"{error.strerror or error}:{location}"
        stderr.print(f"error: {message}", markup=False)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        raise typer.Exit(code=130) from None
