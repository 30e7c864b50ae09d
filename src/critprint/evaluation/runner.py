"""Run a benchmark plan: make the attacked copies, fingerprint every model with every method, score every pair.

Everything a run computes is kept under its output folder (attacked models,
fingerprint files, IPGuard fingerprints), each file written atomically, so an
interrupted run resumes where it stopped and a finished one is not redone.
A cached file is reused only when it records the same model hash and the same
settings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from critprint import zoo
from critprint.api import fingerprint_model
from critprint.attacks import RestorationTask, run_attack
from critprint.baselines import IPGuardFingerprint, IPGuardSettings, ipguard_fingerprint, match_rate
from critprint.baselines.watermark import (
    EmbedSettings,
    WatermarkKey,
    default_settings,
    embed_watermark,
    fidelity,
    load_key,
    save_key,
    verify_watermark,
)
from critprint.calibration import Calibration, calibration_from_fingerprints, calibrated_decision, save_calibration
from critprint.decision import decide, feature_distance
from critprint.errors import CritprintError, FingerprintFormatError
from critprint.evaluation.metrics import held_out_null
from critprint.evaluation.plan import DERIVED_METHODS, BenchPlan, TaskPlan
from critprint.fingerprint import Fingerprint, atomic_write_bytes, load_fingerprint, save_fingerprint
from critprint.models import ModelHandle, file_sha256, load_model, read_state_dict, save_state_dict
from critprint.protocol import Protocol, get_protocol
from critprint.query import ProbeSettings, query_distances

__all__ = [
    "PairScore", "TaskRun", "BenchProgress", "run_task", "method_protocol", "cached_fingerprint", "IPGUARD_HEADS",
    "AttackedModels", "attacked_models",
]

logger = logging.getLogger(__name__)

BenchProgress = Callable[[int, int, str], None]
"""Called as ``progress(done, total, label)`` before each job of a run and once at the end."""

IPGUARD_HEADS = {"projcl": "projection", "poolcl": "pool"}
"""IPGuard baselines and the classifier head each puts on the restoration model."""

_RATIO_FLOOR = 1e-12


@dataclass(frozen=True)
class PairScore:
    """One (source, suspect) comparison by one method.

    Attributes:
        method: The fingerprinting method.
        source: The model whose fingerprint is compared against.
        suspect: The model under test.
        kind: ``positive`` (an attacked copy of the source) or ``negative``
            (another unattacked model).
        attack: The attack that made a positive's suspect; None for negatives.
        hard: True when either model is a hard negative (same architecture,
            other photos or seed).
        value: The method's raw statistic: d / eta, the IPGuard match rate,
            or a watermark's bit accuracy.
        ratio: Normalised so that below 1 means derived.
        score: Larger means more confidently derived; used for the ROC.
        derived: The method's verdict.
    """

    method: str
    source: str
    suspect: str
    kind: str
    attack: str | None
    hard: bool
    value: float
    ratio: float
    score: float
    derived: bool


@dataclass
class TaskRun:
    """Everything a benchmark measured on one task."""

    plan: TaskPlan
    attacks: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[PairScore] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    images: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    watermarks: list[dict[str, Any]] = field(default_factory=list)
    watermark_attacks: list[dict[str, Any]] = field(default_factory=list)


def method_protocol(method: str, base: Protocol) -> Protocol:
    """Return the extraction protocol of a critical-image method (``critprint``, ``maxobj``, ``no-tv``)."""
    if method == "maxobj":
        return base.replace(objective="maximise")
    if method == "no-tv":
        return base.replace(tv_weight=0.0)
    return base


def watermarked_name(source: str, method: str) -> str:
    """Name of a source's watermarked copy in records and file names."""
    return f"{source}@{method}"


def attacked_name(source: str, attack: str) -> str:
    """Name of a source's attacked copy in tables and file names."""
    return f"{source}+{attack}"


def cached_fingerprint(handle: ModelHandle, protocol: Protocol, path: Path) -> Fingerprint:
    """Return the fingerprint stored at ``path`` if it records this model and protocol, else extract and store it.

    A file that records another model hash or protocol, or cannot be read, is
    replaced; the new file is written atomically.
    """
    if path.exists():
        try:
            cached = load_fingerprint(path)
            if cached.protocol == protocol and cached.model.sha256 == handle.sha256:
                return cached
        except FingerprintFormatError as error:
            logger.warning("recomputing %s: %s", path, error)
    record = fingerprint_model(handle, protocol)
    save_fingerprint(record, path)
    return record


class _TaskRunner:
    def __init__(self, plan: BenchPlan, task: TaskPlan, out_dir: Path) -> None:
        self.plan = plan
        self.task = task
        self.folder = out_dir / task.task
        changes = {} if plan.iterations is None else {"iterations": plan.iterations}
        self.base_protocol = get_protocol(plan.protocol, task.task, scale=task.scale, **changes)  # type: ignore[arg-type]
        self.restoration = RestorationTask(
            task=task.task,
            scale=task.scale,
            finetune_steps=plan.finetune_steps,
            distill_steps=plan.distill_steps,
        )
        self.paths: dict[str, Path] = {name: zoo.model_path(name) for name in task.references}
        self.handles: dict[str, ModelHandle] = {}
        self.result = TaskRun(plan=task)
        self.critical: dict[str, Fingerprint] = {}
        self.calibration: Calibration | None = None
        self.watermark_paths: dict[str, Path] = {}
        self.watermark_keys: dict[str, WatermarkKey] = {}

    # Models -------------------------------------------------------------

    def handle(self, name: str) -> ModelHandle:
        if name not in self.handles:
            self.handles[name] = load_model(self.paths[name])
        return self.handles[name]

    def make_attack(self, source: str, attack: str) -> None:
        name = attacked_name(source, attack)
        weights = self.folder / "models" / f"{name}.safetensors"
        record = self.folder / "models" / f"{name}.json"
        source_hash = self.handle(source).sha256
        # Compare settings after a JSON round trip, which turns tuples into lists.
        settings = json.loads(json.dumps(asdict(self.restoration)))
        if weights.exists() and record.exists():
            outcome = json.loads(record.read_text(encoding="utf-8"))
            if outcome.get("source_sha256") == source_hash and outcome.get("restoration") == settings:
                self.paths[name] = weights
                self.result.attacks.append(outcome)
                return
        start = time.perf_counter()
        attacked, result = run_attack(attack, read_state_dict(self.paths[source]), self.restoration)
        save_state_dict(attacked, weights)
        outcome = {"source": source, "model": name, "source_sha256": source_hash,
                   "restoration": settings, **result.to_dict()}
        atomic_write_bytes(record, (json.dumps(outcome, indent=2) + "\n").encode())
        self.paths[name] = weights
        self.result.attacks.append(outcome)
        logger.info("%s: PSNR change %+.2f dB in %.1f s", name, result.psnr_change_db, time.perf_counter() - start)

    # Critical-image methods ----------------------------------------------

    def fingerprint(self, method: str, name: str) -> Fingerprint:
        protocol = method_protocol(method, self.base_protocol)
        path = self.folder / "fingerprints" / method / f"{name}.safetensors"
        return cached_fingerprint(self.handle(name), protocol, path)

    def score_critical(self, method: str, records: dict[str, Fingerprint]) -> None:
        def add(source: str, suspect: str, kind: str, attack: str | None) -> None:
            protocol = records[source].protocol
            decision = decide(records[source].features, records[suspect].features, protocol.alpha, protocol.sigma_h)
            self.result.pairs.append(PairScore(
                method=method, source=source, suspect=suspect, kind=kind, attack=attack,
                hard=self.is_hard(source, suspect), value=decision.ratio, ratio=decision.ratio,
                score=-math.log10(max(decision.ratio, _RATIO_FLOOR)), derived=decision.verdict == "derived",
            ))

        self.each_pair(add, records)
        self.result.images[method] = {name: record.critical_image for name, record in records.items()}
        if method == "critprint":
            self.critical = records

    # Calibrated rule and query-only ------------------------------------------

    def score_calibrated(self) -> None:
        records = self.critical
        references = [name for name in self.task.references if name in records]
        null = {(a, b): feature_distance(records[a].features, records[b].features)
                for i, a in enumerate(references) for b in references[i + 1 :]}

        def add(source: str, suspect: str, kind: str, attack: str | None) -> None:
            distance = feature_distance(records[source].features, records[suspect].features)
            decision = calibrated_decision(held_out_null(null, source, suspect), distance, self.plan.fpr, "d")
            self.result.pairs.append(PairScore(
                method="calibrated", source=source, suspect=suspect, kind=kind, attack=attack,
                hard=self.is_hard(source, suspect), value=distance, ratio=decision.ratio,
                score=-math.log10(max(distance, _RATIO_FLOOR)), derived=decision.verdict == "derived",
            ))

        self.each_pair(add, records)
        self.calibration = calibration_from_fingerprints({name: records[name] for name in references},
                                                         note=f"bench references of task {self.task.task}")
        self.write_calibration()

    def write_calibration(self) -> None:
        """Write DIR/TASK/calibration.json from every reference, usable by verify --calibration."""
        if self.calibration is not None:
            self.result.calibration = self.calibration.summary(self.plan.fpr)
            save_calibration(self.calibration, self.folder / "calibration.json")

    def score_query(self) -> None:
        records = self.critical
        probes = ProbeSettings()
        distances: dict[tuple[str, str], float] = {}
        source_names = [name for name in self.task.references if name in records]
        for source in source_names:
            suspects = [name for name in self.task.references if name != source]
            if source in self.task.sources:
                suspects += [attacked_name(source, attack) for attack in self.plan.attacks_for(self.task)]
            values = query_distances(records[source].critical_image, records[source].protocol, self.handle(source),
                                     ((name, self.handle(name)) for name in suspects if name in self.paths), probes)
            distances.update({(source, name): value for name, value in values.items()})
        null = {pair: value for pair, value in distances.items() if "+" not in pair[1]}
        if self.calibration is not None:
            self.calibration = replace(self.calibration, q_null=tuple(null.values()), q_pairs=tuple(null),
                                       probes=probes.to_dict())
            self.write_calibration()

        def add(source: str, suspect: str, kind: str, attack: str | None) -> None:
            value = distances[(source, suspect)]
            decision = calibrated_decision(held_out_null(null, source, suspect), value, self.plan.fpr, "q")
            self.result.pairs.append(PairScore(
                method="query", source=source, suspect=suspect, kind=kind, attack=attack,
                hard=self.is_hard(source, suspect), value=value, ratio=decision.ratio,
                score=-math.log10(max(value, _RATIO_FLOOR)), derived=decision.verdict == "derived",
            ))

        self.each_pair(add, records, {name for (_, name) in distances})

    # IPGuard baselines -----------------------------------------------------

    def ipguard_settings(self, method: str) -> IPGuardSettings:
        return IPGuardSettings(
            head=IPGUARD_HEADS[method],
            points=self.plan.ipguard_points,
            size=min(self.plan.ipguard_size, self.base_protocol.input_size),
            iterations=self.plan.ipguard_iterations,
            seed=self.base_protocol.seed,
        )

    def ipguard(self, method: str, name: str) -> IPGuardFingerprint:
        settings = self.ipguard_settings(method)
        path = self.folder / "fingerprints" / method / f"{name}.safetensors"
        handle = self.handle(name)
        key = json.dumps({"settings": asdict(settings), "sha256": handle.sha256}, sort_keys=True)
        if path.exists():
            try:
                data = path.read_bytes()
                header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
                if header.get("__metadata__", {}).get("critprint-ipguard") == key:
                    tensors = load_tensors(data)
                    return IPGuardFingerprint(settings=settings, points=tensors["points"], labels=tensors["labels"])
            except (SafetensorError, ValueError, KeyError) as error:
                logger.warning("recomputing %s: %s", path, error)
        record = ipguard_fingerprint(handle, settings)
        data = save_tensors({"points": record.points.contiguous(), "labels": record.labels.contiguous()},
                            metadata={"critprint-ipguard": key})
        atomic_write_bytes(path, data)
        return record

    def score_ipguard(self, method: str, records: dict[str, IPGuardFingerprint]) -> None:
        rates: dict[tuple[str, str], float] = {}

        def collect(source: str, suspect: str, kind: str, attack: str | None) -> None:
            rates[(source, suspect)] = match_rate(self.handle(suspect), records[source])

        self.each_pair(collect, records, self.paths)
        # The rule of "Fingerprinting Deep Image Restoration Models": the lowest threshold under which every pair
        # of different source models is distinguished.
        sources = set(self.task.sources)
        source_rates = [rate for (a, b), rate in rates.items() if a in sources and b in sources and a != b]
        threshold = max(source_rates, default=0.0)
        self.result.thresholds[method] = threshold

        def add(source: str, suspect: str, kind: str, attack: str | None) -> None:
            rate = rates[(source, suspect)]
            ratio = (1.0 - rate) / (1.0 - threshold) if threshold < 1.0 else 2.0 - rate
            self.result.pairs.append(PairScore(
                method=method, source=source, suspect=suspect, kind=kind, attack=attack,
                hard=self.is_hard(source, suspect), value=rate, ratio=ratio, score=rate, derived=rate > threshold,
            ))

        self.each_pair(add, records, self.paths)

    # Watermarking baselines ------------------------------------------------

    def watermark_settings(self, method: str) -> EmbedSettings:
        changes: dict[str, Any] = {"steps": self.plan.watermark_steps, "seed": self.base_protocol.seed}
        if self.plan.watermark_learning_rate is not None:
            changes["learning_rate"] = self.plan.watermark_learning_rate
        return default_settings(method, **changes)

    def watermark(self, method: str, source: str) -> None:
        """Watermark a source (or reuse the stored copy made from the same model and settings)."""
        name = watermarked_name(source, method)
        folder = self.folder / "watermarks" / method
        weights, key_path, record = (folder / f"{source}{suffix}" for suffix in (".safetensors", ".key", ".json"))
        source_hash = self.handle(source).sha256
        settings = self.watermark_settings(method)
        settings_dict = settings.to_dict()
        restoration = json.loads(json.dumps(asdict(self.restoration)))

        if weights.exists() and key_path.exists() and record.exists():
            outcome = json.loads(record.read_text(encoding="utf-8"))
            if (outcome.get("source_sha256"), outcome.get("settings"), outcome.get("restoration")) == (
                source_hash, settings_dict, restoration
            ):
                self.watermark_paths[name] = weights
                self.watermark_keys[name] = load_key(key_path)
                self.result.watermarks.append(outcome)
                return

        original = read_state_dict(self.paths[source])
        marked = embed_watermark(method, original, self.restoration, settings)
        cost = fidelity(original, marked.state_dict, self.restoration)
        check = verify_watermark(marked.state_dict, marked.key, self.restoration)

        save_state_dict(marked.state_dict, weights)
        save_key(marked.key, key_path)
        outcome = {
            "method": method, "source": source, "model": name, "source_sha256": source_hash,
            "settings": settings_dict, "restoration": restoration, "seconds": round(marked.seconds, 2),
            "psnr_before_db": cost.psnr_before_db, "psnr_after_db": cost.psnr_after_db,
            "psnr_change_db": cost.psnr_change_db, "accuracy": check.accuracy, "threshold": check.threshold,
            "verified": check.verified,
        }
        atomic_write_bytes(record, (json.dumps(outcome, indent=2) + "\n").encode())
        self.watermark_paths[name] = weights
        self.watermark_keys[name] = marked.key
        self.result.watermarks.append(outcome)
        logger.info("%s: PSNR change %+.3f dB, bit accuracy %.3f", name, cost.psnr_change_db, check.accuracy)

    def watermark_attack(self, method: str, source: str, attack: str) -> None:
        """Attack a watermarked source (or reuse the stored copy of the same watermarked model and settings)."""
        marked = watermarked_name(source, method)
        if marked not in self.watermark_paths:
            return  # its embedding failed, which is recorded once
        name = attacked_name(marked, attack)
        folder = self.folder / "watermarks" / method / "attacked"
        weights, record = folder / f"{source}+{attack}.safetensors", folder / f"{source}+{attack}.json"
        source_hash = file_sha256(self.watermark_paths[marked])
        settings = json.loads(json.dumps(asdict(self.restoration)))
        if weights.exists() and record.exists():
            outcome = json.loads(record.read_text(encoding="utf-8"))
            if outcome.get("source_sha256") == source_hash and outcome.get("restoration") == settings:
                self.watermark_paths[name] = weights
                self.result.watermark_attacks.append(outcome)
                return
        attacked, result = run_attack(attack, read_state_dict(self.watermark_paths[marked]), self.restoration)
        save_state_dict(attacked, weights)
        outcome = {"method": method, "source": source, "model": name, "source_sha256": source_hash,
                   "restoration": settings, **result.to_dict()}
        atomic_write_bytes(record, (json.dumps(outcome, indent=2) + "\n").encode())
        self.watermark_paths[name] = weights
        self.result.watermark_attacks.append(outcome)
        logger.info("%s: PSNR change %+.2f dB", name, result.psnr_change_db)

    def score_watermark(self, method: str) -> None:
        """Verify each key on the attacked watermarked copies (positives) and on every reference (negatives).

        Results are kept in ``watermarks/METHOD/verifications.json`` by key
        and model hash, so a repeated run does not run the models again.
        """
        cache_path = self.folder / "watermarks" / method / "verifications.json"
        cache: dict[str, float] = {}
        if cache_path.exists():
            try:
                cache = json.loads(cache_path.read_text(encoding="utf-8"))
            except ValueError as error:
                logger.warning("recomputing %s: %s", cache_path, error)
        hashes: dict[Path, str] = {}

        def digest(path: Path) -> str:
            if path not in hashes:
                hashes[path] = file_sha256(path)
            return hashes[path]

        for source in self.task.sources:
            key_name = watermarked_name(source, method)
            if key_name not in self.watermark_keys:
                continue
            key = self.watermark_keys[key_name]
            key_hash = digest(self.folder / "watermarks" / method / f"{source}.key")
            threshold = key.threshold
            suspects: list[tuple[str, str, str | None, Path]] = []
            for attack in self.plan.attacks_for(self.task):
                path = self.watermark_paths.get(attacked_name(key_name, attack))
                if path is not None:
                    suspects.append((attacked_name(source, attack), "positive", attack, path))
            suspects += [(name, "negative", None, self.paths[name]) for name in self.task.references]
            for suspect, kind, attack, path in suspects:
                entry = f"{key_hash}:{digest(path)}"
                if entry not in cache:
                    cache[entry] = verify_watermark(read_state_dict(path), key, self.restoration).accuracy
                value = cache[entry]
                ratio = (1.0 - value) / (1.0 - threshold)
                self.result.pairs.append(PairScore(
                    method=method, source=source, suspect=suspect, kind=kind, attack=attack,
                    hard=self.is_hard(source, suspect), value=value, ratio=ratio, score=value,
                    derived=value >= threshold,
                ))
        atomic_write_bytes(cache_path, (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())

    # Pairs -------------------------------------------------------------------

    def is_hard(self, source: str, suspect: str) -> bool:
        hard = set(self.task.hard_negatives)
        return source in hard or suspect.split("+")[0] in hard

    def each_pair(
        self,
        visit: Callable[[str, str, str, str | None], None],
        records: dict[str, Any],
        suspects: set[str] | dict[str, Any] | None = None,
    ) -> None:
        """Visit every positive (source, attacked copy) and every negative (reference, other reference).

        A pair is visited when its source is in ``records`` and its suspect in
        ``suspects`` (default: ``records``), so pairs of failed jobs are skipped.
        """
        available = records if suspects is None else suspects
        for source in self.task.sources:
            for attack in self.plan.attacks_for(self.task):
                suspect = attacked_name(source, attack)
                if source in records and suspect in available:
                    visit(source, suspect, "positive", attack)
        for source in self.task.references:
            for suspect in self.task.references:
                if source != suspect and source in records and suspect in available:
                    visit(source, suspect, "negative", None)


def _jobs(runner: _TaskRunner) -> list[tuple[str, Callable[[], None]]]:
    """List the task's jobs in order; later jobs read what earlier ones made."""
    plan, task = runner.plan, runner.task
    jobs: list[tuple[str, Callable[[], None]]] = []
    if plan.fingerprint_methods:
        for source in task.sources:
            for attack in plan.attacks_for(task):
                jobs.append((f"{task.task}: attack {source} with {attack}",
                             lambda s=source, a=attack: runner.make_attack(s, a)))

    for method in plan.fingerprint_methods:
        if method in DERIVED_METHODS:
            continue
        if method in IPGUARD_HEADS:
            ipguard_records: dict[str, IPGuardFingerprint] = {}
            for name in task.references:
                jobs.append((f"{task.task}: {method} fingerprint of {name}",
                             lambda m=method, n=name, r=ipguard_records: r.__setitem__(n, runner.ipguard(m, n))))
            jobs.append((f"{task.task}: {method} match rates",
                         lambda m=method, r=ipguard_records: runner.score_ipguard(m, r)))
        else:
            critical_records: dict[str, Fingerprint] = {}
            for name in _planned_models(runner):
                jobs.append((f"{task.task}: {method} fingerprint of {name}",
                             lambda m=method, n=name, r=critical_records: _fingerprint_if_present(runner, m, n, r)))
            jobs.append((f"{task.task}: {method} distances",
                         lambda m=method, r=critical_records: runner.score_critical(m, r)))
    if "calibrated" in plan.methods:
        jobs.append((f"{task.task}: calibrated decisions", runner.score_calibrated))
    if "query" in plan.methods:
        jobs.append((f"{task.task}: query-only distances", runner.score_query))
    jobs += _watermark_jobs(runner)
    return jobs


def _watermark_jobs(runner: _TaskRunner) -> list[tuple[str, Callable[[], None]]]:
    """List the watermarking jobs: per source, every method's embedding and attacks; then the verifications.

    Sources come first in the order so that a run stopped early has every
    method on the sources it finished.
    """
    plan, task = runner.plan, runner.task
    jobs: list[tuple[str, Callable[[], None]]] = []
    for source in task.sources:
        for method in plan.watermark_methods:
            jobs.append((f"{task.task}: {method} watermark of {source}",
                         lambda m=method, s=source: runner.watermark(m, s)))
            for attack in plan.attacks_for(task):
                jobs.append((f"{task.task}: attack {method}-watermarked {source} with {attack}",
                             lambda m=method, s=source, a=attack: runner.watermark_attack(m, s, a)))
    for method in plan.watermark_methods:
        jobs.append((f"{task.task}: {method} verifications", lambda m=method: runner.score_watermark(m)))
    return jobs


def _planned_models(runner: _TaskRunner) -> list[str]:
    names = list(runner.task.references)
    for source in runner.task.sources:
        names += [attacked_name(source, attack) for attack in runner.plan.attacks_for(runner.task)]
    return names


def _fingerprint_if_present(runner: _TaskRunner, method: str, name: str, records: dict[str, Fingerprint]) -> None:
    # An attacked copy is missing when its attack failed; that is recorded once.
    if name in runner.paths:
        records[name] = runner.fingerprint(method, name)


def count_jobs(plan: BenchPlan) -> int:
    """Return the number of jobs a plan runs, for progress reporting."""
    total = 0
    for task in plan.tasks:
        attacked = len(task.sources) * len(plan.attacks_for(task))
        if plan.fingerprint_methods:
            total += attacked
        total += len(plan.watermark_methods) * (len(task.sources) + attacked + 1)
        for method in plan.fingerprint_methods:
            if method in DERIVED_METHODS:
                total += 1
                continue
            total += (len(task.references) if method in IPGUARD_HEADS else len(task.references) + attacked) + 1
    return total


@dataclass(frozen=True)
class AttackedModels:
    """A task's models ready for scoring: every reference and every attacked copy that was made.

    Attributes:
        paths: Model name to weights file, references and attacked copies.
        attacks: One record per attacked copy, as ``DIR/TASK/models/NAME.json`` contains it.
        failures: ``{"job", "error"}`` of each attack that failed.
    """

    paths: dict[str, Path]
    attacks: list[dict[str, Any]]
    failures: list[dict[str, str]]


def attacked_models(
    plan: BenchPlan,
    task: TaskPlan,
    out_dir: Path,
    progress: BenchProgress | None = None,
) -> AttackedModels:
    """Make (or reuse from ``out_dir``) the attacked copies of a task's sources, as a benchmark run does.

    A study run over a finished benchmark's folder with the same plan
    settings reuses its attacked copies instead of training them again.
    """
    runner = _TaskRunner(plan, task, out_dir)
    failures: list[dict[str, str]] = []
    pending = [(source, attack) for source in task.sources for attack in plan.attacks_for(task)]
    for index, (source, attack) in enumerate(pending):
        label = f"{task.task}: attack {source} with {attack}"
        if progress is not None:
            progress(index, len(pending), label)
        try:
            runner.make_attack(source, attack)
        except (CritprintError, RuntimeError, ValueError) as error:
            logger.warning("%s failed: %s", label, error)
            failures.append({"job": label, "error": f"{type(error).__name__}: {error}"})
    return AttackedModels(paths=dict(runner.paths), attacks=list(runner.result.attacks), failures=failures)


def run_task(
    plan: BenchPlan,
    task: TaskPlan,
    out_dir: Path,
    progress: BenchProgress | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> TaskRun:
    """Run every job of one task and return what it measured.

    A job that fails with a critprint or model error is logged and recorded
    in ``TaskRun.failures``; the pairs it would have fed are left out.
    """
    runner = _TaskRunner(plan, task, out_dir)
    jobs = _jobs(runner)
    total = total if total is not None else len(jobs)
    for index, (label, job) in enumerate(jobs):
        if progress is not None:
            progress(done_before + index, total, label)
        start = time.perf_counter()
        try:
            job()
        except (CritprintError, RuntimeError, ValueError) as error:
            logger.warning("%s failed: %s", label, error)
            runner.result.failures.append({"job": label, "error": f"{type(error).__name__}: {error}"})
        runner.result.seconds[label] = round(time.perf_counter() - start, 3)
    return runner.result
