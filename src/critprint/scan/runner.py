"""Run a scan: collect the models, skip those already in the results file, run the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from critprint.scan.executors import Executor
from critprint.scan.results import ResultsFile, ScanResult
from critprint.scan.sources import ScanItem
from critprint.scan.worker import ScanJob

__all__ = ["ScanCounts", "ScanSummary", "run_scan"]

logger = logging.getLogger(__name__)


@dataclass
class ScanCounts:
    """Where a scan stands.

    Attributes:
        total: Models in the scan, those done by an earlier run included.
        resumed: Models found in the results file when the scan started.
        done: Models finished by this run, failed ones included.
        failed: Models of this run that gave an error line.
        seconds: Time since this run started.
    """

    total: int
    resumed: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        """Models still to run."""
        return self.total - self.resumed - self.done

    @property
    def per_minute(self) -> float:
        """Models finished per minute by this run."""
        return 60.0 * self.done / self.seconds if self.seconds > 0 else 0.0


ProgressHook = Callable[[ScanCounts, ScanResult | None], None]
"""Called as ``hook(counts, result)`` once before the first model (result None) and after each."""


@dataclass(frozen=True)
class ScanSummary:
    """The outcome of a scan run.

    Attributes:
        out: The results file.
        total: Models in the scan.
        resumed: Models already in the results file, not run again.
        ran: Models this run finished.
        failed: Error lines of this run.
        failed_total: Error lines in the whole results file.
        seconds: Wall-clock time of this run.
        models_per_minute: ``ran`` per minute of this run.
        torn_bytes: Bytes of a torn last line cut from the results file.
    """

    out: str
    total: int
    resumed: int
    ran: int
    failed: int
    failed_total: int
    seconds: float
    models_per_minute: float
    torn_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-compatible dictionary."""
        return asdict(self)


def run_scan(
    items: list[ScanItem],
    job: ScanJob,
    executor: Executor,
    out: Path,
    resume: bool = False,
    progress: ProgressHook | None = None,
) -> ScanSummary:
    """Register or identify every item, writing a result line as each finishes.

    With ``resume`` the models already in ``out`` are skipped (error lines
    included), so after any interruption each model ends in the file exactly
    once. A broken model gives an error line and the scan goes on.

    Raises:
        InvalidInputError: If ``out`` exists without ``resume``, or contains
            another mode's results.
        ScanError: If the executor cannot start or loses its workers; the
            lines written so far stay.
    """
    start = time.perf_counter()
    with ResultsFile(out, job.mode, resume) as results:
        names = {item.name for item in items}
        stale = sorted(set(results.results) - names)
        if stale:
            logger.warning("%s contains %d results of models not in this scan, for example %s", out, len(stale), stale[0])
        todo = [item for item in items if item.name not in results.results]
        counts = ScanCounts(total=len(items), resumed=len(items) - len(todo))
        logger.info("scan of %d models: %d done before, %d to run", len(items), counts.resumed, len(todo))
        if progress is not None:
            progress(counts, None)
        for result in executor.run(job, todo):
            results.append(result)
            counts.done += 1
            counts.failed += result.status == "error"
            counts.seconds = time.perf_counter() - start
            if progress is not None:
                progress(counts, result)
        failed_total = sum(
            1 for name, result in results.results.items() if name in names and result.status == "error"
        )
        torn = results.torn_bytes
    seconds = time.perf_counter() - start
    return ScanSummary(
        out=str(out), total=len(items), resumed=counts.resumed, ran=counts.done, failed=counts.failed,
        failed_total=failed_total, seconds=seconds,
        models_per_minute=60.0 * counts.done / seconds if seconds > 0 else 0.0, torn_bytes=torn,
    )
