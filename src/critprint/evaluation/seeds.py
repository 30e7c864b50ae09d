"""Initialisation consistency: critical images of one model from several random starts.

The study behind ``critprint bench --study seeds``, after Figure 3 of
"Fingerprinting Deep Image Restoration Models". For every source model of a
task it extracts a critical image under seeds 0 to S - 1 (the seed draws the
initial image X0 and the degradation's noise), then compares every
(model, seed) pair with d / eta. Two numbers matter per model:

- *within*: the largest d / eta between two of its own seeds. Below 1, the
  rule d < eta judges a model derived from itself whatever the seed.
- *across*: the smallest d / eta between one of its seeds and any seed of
  another model. Above 1, no seed makes it look derived from another model.

The summary also repeats both with features averaged over K = S // 2 seeds
(the first K seeds against the rest), which shows what averaging several
initialisations would change.

Fingerprints are cached under ``DIR/TASK/seeds/seed-K/`` and reused when they
record the same model hash and protocol, as the benchmark runner does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import torch

from critprint import zoo
from critprint.checks import check_choice
from critprint.decision import decide
from critprint.errors import InvalidInputError
from critprint.evaluation.plan import get_plan
from critprint.evaluation.report import heatmap, montage, run_metadata
from critprint.evaluation.runner import BenchProgress, cached_fingerprint
from critprint.fingerprint import Fingerprint, atomic_write_bytes
from critprint.models import load_model
from critprint.protocol import Protocol, get_protocol

__all__ = ["MIN_SEEDS", "SeedEntry", "SeedStudy", "seed_ratio_matrix", "summarise_seeds", "run_seed_study",
           "run_seed_studies", "render_seed_markdown"]

logger = logging.getLogger(__name__)

MIN_SEEDS: Final[int] = 2
"""Minimum number of seeds a study accepts, so that each model has at least one pair of initialisations."""


@dataclass(frozen=True)
class SeedEntry:
    """Result of the seed study for one model.

    Attributes:
        model: The model's name.
        within: Largest d / eta between two of its own seeds.
        within_pair: The two seeds of that value.
        across: Smallest d / eta between one of its seeds and a seed of another model.
        across_model: The other model of that value.
        across_seeds: (own seed, other model's seed) of that value.
        within_averaged: d / eta between its features averaged over the first S // 2 seeds and over the rest.
        across_averaged: Smallest d / eta between its half-averaged features and another model's.
        seconds: Extraction seconds over its seeds, as recorded in the fingerprints.
    """

    model: str
    within: float
    within_pair: tuple[int, int]
    across: float | None
    across_model: str | None
    across_seeds: tuple[int, int] | None
    within_averaged: float
    across_averaged: float | None
    seconds: float


@dataclass(frozen=True)
class SeedStudy:
    """Result of the seed study on one task.

    Attributes:
        task: The task name.
        models: Model names, in matrix order.
        seeds: The seeds, in matrix order.
        ratios: d / eta of every ordered pair of (model, seed) entries,
            model-major: entry i is (models[i // len(seeds)], seeds[i % len(seeds)]).
            The diagonal is 0.
        entries: One :class:`SeedEntry` per model.
        protocol: The protocol of seed 0, as a dictionary.
    """

    task: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    ratios: list[list[float]]
    entries: tuple[SeedEntry, ...]
    protocol: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the study as a JSON-compatible dictionary."""
        data = asdict(self)
        data["largest_within"] = max(entry.within for entry in self.entries)
        across = [entry.across for entry in self.entries if entry.across is not None]
        data["smallest_across"] = min(across) if across else None
        data["within_judged_independent"] = sum(
            1 for i, row in enumerate(self.ratios) for j, value in enumerate(row)
            if i != j and self._model(i) == self._model(j) and value >= 1.0
        )
        data["within_pairs"] = len(self.models) * len(self.seeds) * (len(self.seeds) - 1)
        data["across_judged_derived"] = sum(
            1 for i, row in enumerate(self.ratios) for j, value in enumerate(row)
            if self._model(i) != self._model(j) and value < 1.0
        )
        data["across_pairs"] = len(self.ratios) ** 2 - len(self.models) * len(self.seeds) ** 2
        return data

    def _model(self, index: int) -> str:
        return self.models[index // len(self.seeds)]


def _check_seeds(seeds: int) -> None:
    if seeds < MIN_SEEDS:
        raise InvalidInputError(
            f"invalid seeds {seeds!r}: expected an integer >= {MIN_SEEDS}, since the study compares "
            f"initialisations of one model; pass --seeds {MIN_SEEDS} or more"
        )


def seed_ratio_matrix(
    records: Mapping[tuple[str, int], Fingerprint], models: Sequence[str], seeds: Sequence[int]
) -> list[list[float]]:
    """Return d / eta of every ordered pair of (model, seed) records, model-major, with the row as source.

    Uses :func:`critprint.decision.decide` with the row's alpha and sigma_h,
    so the diagonal is 0 and a value below 1 means the rule d < eta judges
    the column derived from the row.
    """
    keys = [(model, seed) for model in models for seed in seeds]
    matrix = []
    for row in keys:
        source = records[row]
        alpha, sigma_h = source.protocol.alpha, source.protocol.sigma_h
        matrix.append([decide(source.features, records[column].features, alpha, sigma_h).ratio for column in keys])
    return matrix


def _averaged_ratio(a: Sequence[Fingerprint], b: Sequence[Fingerprint]) -> float:
    first = torch.stack([record.features.to(torch.float64) for record in a]).mean(dim=0)
    second = torch.stack([record.features.to(torch.float64) for record in b]).mean(dim=0)
    protocol = a[0].protocol
    return decide(first, second, protocol.alpha, protocol.sigma_h).ratio


def summarise_seeds(
    matrix: Sequence[Sequence[float]],
    models: Sequence[str],
    seeds: Sequence[int],
    records: Mapping[tuple[str, int], Fingerprint] | None = None,
) -> tuple[SeedEntry, ...]:
    """Return, per model, the largest d / eta between its own seeds and the smallest to another model.

    Args:
        matrix: The output of :func:`seed_ratio_matrix`.
        models: Model names in matrix order.
        seeds: Seeds in matrix order.
        records: The fingerprints, for the half-averaged values and the
            seconds; both are left at 0 without them.
    """
    count = len(seeds)
    if len(matrix) != len(models) * count:
        raise InvalidInputError(
            f"invalid seed matrix: expected {len(models) * count} rows for {len(models)} models and {count} seeds, "
            f"got {len(matrix)}"
        )
    half = count // 2
    entries = []
    for m, model in enumerate(models):
        own = range(m * count, (m + 1) * count)
        within, within_pair = max(
            (matrix[i][j], (seeds[i - m * count], seeds[j - m * count])) for i in own for j in own if i != j
        )
        across_values = [
            (matrix[i][j], models[j // count], (seeds[i - m * count], seeds[j % count]))
            for i in own for j in range(len(matrix)) if j // count != m
        ]
        across = min(across_values, key=lambda item: item[0]) if across_values else None
        within_averaged, across_averaged, seconds = 0.0, None, 0.0
        if records is not None:
            mine = [records[(model, seed)] for seed in seeds]
            within_averaged = _averaged_ratio(mine[:half], mine[half:])
            others = [
                _averaged_ratio(mine[start:stop], [records[(other, seed)] for seed in seeds][o_start:o_stop])
                for other in models if other != model
                for start, stop in ((0, half), (half, count))
                for o_start, o_stop in ((0, half), (half, count))
            ]
            across_averaged = min(others) if others else None
            seconds = sum(record.seconds for record in mine)
        entries.append(SeedEntry(
            model=model, within=within, within_pair=within_pair,
            across=None if across is None else across[0],
            across_model=None if across is None else across[1],
            across_seeds=None if across is None else across[2],
            within_averaged=within_averaged, across_averaged=across_averaged, seconds=round(seconds, 1),
        ))
    return tuple(entries)


def _task_models(task: str) -> dict[str, Path]:
    tasks = {plan.task: plan for plan in get_plan("full").tasks}
    check_choice("task", task, tasks)
    return {name: zoo.model_path(name) for name in tasks[task].sources}


def run_seed_study(
    task: str,
    out_dir: str | Path,
    seeds: int = 4,
    protocol: str | Protocol = "quick",
    iterations: int | None = None,
    models: Mapping[str, str | Path] | None = None,
    progress: BenchProgress | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> SeedStudy:
    """Extract every model's critical image under seeds 0 to ``seeds`` - 1 and compare them all.

    Writes ``out_dir/TASK/seeds-montage.png`` (rows: models, columns: seeds)
    and ``out_dir/TASK/seeds-matrix.png`` (the d / eta matrix, white diagonal).

    Args:
        task: A task of the evaluation zoo (``denoise``, ``sr``, ``deblur``,
            ``lowlight``, ``derain``, ``jpeg``).
        out_dir: Folder of the outputs and the cached fingerprints.
        seeds: Initialisations per model, at least :data:`MIN_SEEDS`.
        protocol: A preset name, or a protocol whose seed is replaced.
        iterations: Adam steps instead of the preset's, or None.
        models: Name to model path; the task's zoo sources when None.
        progress: Called as ``progress(done, total, label)`` before each extraction.
        done_before: Extractions already counted by the caller's progress.
        total: The caller's total, for progress; this study's own when None.

    Raises:
        InvalidInputError: If ``seeds`` or ``task`` is invalid.
    """
    _check_seeds(seeds)
    paths = _task_models(task) if models is None else {name: Path(path) for name, path in models.items()}
    if len(paths) < 1:
        raise InvalidInputError(f"invalid models for task {task!r}: expected at least one, got none")
    folder = Path(out_dir) / task
    seed_list = tuple(range(seeds))
    names = tuple(paths)
    total = total if total is not None else len(names) * seeds
    records: dict[tuple[str, int], Fingerprint] = {}
    done = done_before
    for name in names:
        handle = load_model(paths[name])
        if isinstance(protocol, Protocol):
            base = protocol
        else:
            base = get_protocol(protocol, task, scale=handle.scale)  # type: ignore[arg-type]
        if iterations is not None:
            base = base.replace(iterations=iterations)
        for seed in seed_list:
            if progress is not None:
                progress(done, total, f"{task}: {name}, seed {seed}")
            path = folder / "seeds" / f"seed-{seed}" / f"{name}.safetensors"
            records[(name, seed)] = cached_fingerprint(handle, base.replace(seed=seed).resolved(), path)
            done += 1
    matrix = seed_ratio_matrix(records, names, seed_list)
    entries = summarise_seeds(matrix, names, seed_list, records)
    rows = [[records[(name, seed)].critical_image for seed in seed_list] for name in names]
    atomic_write_bytes(folder / "seeds-montage.png", montage(rows, scale=1))
    # The benchmark's heat maps leave the diagonal white, so this one does too.
    blank_diagonal: list[list[float | None]] = [
        [None if i == j else value for j, value in enumerate(row)] for i, row in enumerate(matrix)
    ]
    atomic_write_bytes(folder / "seeds-matrix.png", heatmap(blank_diagonal, cell=12))
    return SeedStudy(task=task, models=names, seeds=seed_list, ratios=matrix, entries=entries,
                     protocol=records[(names[0], 0)].protocol.to_dict())


def run_seed_studies(
    tasks: Sequence[str],
    out_dir: str | Path,
    seeds: int = 4,
    protocol: str = "quick",
    iterations: int | None = None,
    progress: BenchProgress | None = None,
) -> dict[str, Any]:
    """Run :func:`run_seed_study` on each task's zoo sources and write ``seeds-summary.json`` and ``seeds-summary.md``.

    Raises:
        InvalidInputError: If ``seeds`` or a task is invalid, before any extraction.

    Returns:
        The summary, as written to ``out_dir/seeds-summary.json``.
    """
    _check_seeds(seeds)
    sizes = {task: len(_task_models(task)) for task in tasks}
    total = sum(sizes.values()) * seeds
    folder = Path(out_dir)
    start = time.perf_counter()
    studies: dict[str, Any] = {}
    done = 0
    for task in tasks:
        study = run_seed_study(task, folder, seeds, protocol, iterations, progress=progress,
                               done_before=done, total=total)
        done += sizes[task] * seeds
        studies[task] = study.to_dict()
    if progress is not None:
        progress(total, total, "done")
    summary = {
        "study": "seeds",
        **run_metadata(start),
        "seeds": seeds,
        "protocol": protocol,
        "iterations": iterations,
        "tasks": studies,
    }
    atomic_write_bytes(folder / "seeds-summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "seeds-summary.md", render_seed_markdown(summary).encode())
    logger.info("seed study finished in %.0f s", summary["seconds"])
    return summary


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.01):
        return f"{value:.2e}"
    return f"{value:.3g}"


def render_seed_markdown(summary: dict[str, Any]) -> str:
    """Render the summary of :func:`run_seed_studies` as Markdown: one table per task."""
    seeds = summary["seeds"]
    half = seeds // 2
    lines = [
        f"# Initialisation consistency ({seeds} seeds, protocol `{summary['protocol']}`)",
        "",
        "d / eta between critical images of the same model from different seeds (within) and of different "
        "models (across); below 1 means judged derived. The averaged columns compare features averaged over "
        f"K = {half} seeds (seeds 0 to {half - 1} against {half} to {seeds - 1}).",
        "",
    ]
    for task, study in summary["tasks"].items():
        lines += [f"## {task}", "",
                  "| model | within, largest | seeds | across, smallest | closest model | seeds | "
                  f"within, K = {half} | across, K = {half} |",
                  "|---|---|---|---|---|---|---|---|"]
        for entry in study["entries"]:
            across_seeds = entry["across_seeds"]
            within_seeds = f"{entry['within_pair'][0]}, {entry['within_pair'][1]}"
            other_seeds = "n/a" if across_seeds is None else f"{across_seeds[0]}, {across_seeds[1]}"
            lines.append(
                f"| {entry['model']} | {_number(entry['within'])} | {within_seeds} "
                f"| {_number(entry['across'])} | {entry['across_model'] or 'n/a'} | {other_seeds} "
                f"| {_number(entry['within_averaged'])} | {_number(entry['across_averaged'])} |"
            )
        lines += [
            "",
            f"Largest within: {_number(study['largest_within'])}; smallest across: "
            f"{_number(study['smallest_across'])}. Pairs of one model's seeds judged independent: "
            f"{study['within_judged_independent']} of {study['within_pairs']}; pairs of different models judged "
            f"derived: {study['across_judged_derived']} of {study['across_pairs']}.",
            "",
            f"![{task} critical images by seed]({task}/seeds-montage.png)",
            "",
            f"![{task} d / eta between (model, seed) pairs]({task}/seeds-matrix.png)",
            "",
        ]
    return "\n".join(lines)
