"""What a benchmark run measures: models, attacks, methods and their settings.

Two plans exist. ``full`` takes every source model and hard negative of the
evaluation zoo: for denoising and super-resolution with every attack, for the
other tasks (deblur, lowlight, derain, jpeg) with pruning and quantization
only, the attacks of Figure 7 of "Fingerprinting Deep Image Restoration
Models". ``quick`` takes a few fast models and the cheapest settings, so that
it fits in the test suite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from critprint import zoo
from critprint.baselines.watermark import WATERMARK_METHODS
from critprint.checks import check_choice
from critprint.errors import InvalidInputError

__all__ = [
    "METHODS", "FINGERPRINT_METHODS", "WATERMARK_METHODS", "DERIVED_METHODS", "ATTACK_NAMES", "OTHER_TASK_ATTACKS",
    "TaskPlan", "BenchPlan", "get_plan", "restrict_attacks", "PLANS",
]

FINGERPRINT_METHODS: Final[tuple[str, ...]] = ("critprint", "calibrated", "query", "maxobj", "no-tv", "projcl", "poolcl")
"""Fingerprinting methods a benchmark compares.

``critprint`` is the method with the paper's threshold. ``calibrated`` is the
same distance judged with a threshold measured on independent models, and
``query`` the query-only verification (the suspect's outputs on probes made
from the source's critical image); both reuse ``critprint``'s critical
images. ``maxobj`` and ``no-tv`` are the ablations of
"Fingerprinting Deep Image Restoration Models" (the objective maximised, and lambda = 0), and
``projcl`` and ``poolcl`` its baselines (IPGuard after a random projection of
the output, or after pooling it to 10 x 10).
"""

METHODS: Final[tuple[str, ...]] = FINGERPRINT_METHODS + WATERMARK_METHODS
"""Every method a benchmark compares: the fingerprints, then the watermarking baselines.

``zhang``, ``quan``, ``ong`` and ``weakwm`` (see
:mod:`critprint.baselines.watermark`) watermark a copy of each source, attack
the watermarked copy, and verify the attacked copies (positives) and the
unwatermarked references (negatives) with the owner's key.
"""

DERIVED_METHODS: Final[tuple[str, ...]] = ("calibrated", "query")
"""Methods computed from ``critprint``'s critical images, without extractions of their own."""

ATTACK_NAMES: Final[tuple[str, ...]] = (
    "prune", "finetune", "quantize", "weight-noise", "half", "channel-prune", "distill",
)


OTHER_TASK_ATTACKS: Final[tuple[str, ...]] = ("prune", "quantize")
"""Attacks of the ``full`` plan on deblurring, low-light, deraining and JPEG models.

Figure 7 of "Fingerprinting Deep Image Restoration Models" shows these two.
Each further attack adds three critical images per source and method, so the
other attacks are left to the denoising and super-resolution tasks.
"""

_OTHER_TASKS: Final[tuple[str, ...]] = ("deblur", "lowlight", "derain", "jpeg")


@dataclass(frozen=True)
class TaskPlan:
    """The models of one task: sources (attacked and compared) and hard negatives (compared).

    Attributes:
        task: The task name.
        scale: The models' scale.
        sources: Models that are attacked and compared.
        hard_negatives: Models that are only compared.
        attacks: Attack names for this task, or None for the plan's
            :attr:`BenchPlan.attacks`.
        compared_sources: Source models of the zoo left out of this run's
            sources (``get_plan(..., sources=...)``): only compared, like
            hard negatives, but not of the same architecture.
    """

    task: str
    scale: int
    sources: tuple[str, ...]
    hard_negatives: tuple[str, ...] = ()
    attacks: tuple[str, ...] | None = None
    compared_sources: tuple[str, ...] = ()

    @property
    def references(self) -> tuple[str, ...]:
        """Every unattacked model of the task: sources, then compared sources, then hard negatives."""
        return self.sources + self.compared_sources + self.hard_negatives


@dataclass(frozen=True)
class BenchPlan:
    """All settings of one benchmark run; recorded in its summary.

    Attributes:
        name: ``quick`` or ``full``.
        protocol: The protocol preset every extraction starts from.
        tasks: The models per task.
        attacks: Attack names, from :data:`ATTACK_NAMES`.
        methods: Method names, from :data:`METHODS`.
        finetune_steps: Steps of the fine-tuning attacks.
        distill_steps: Steps of the distillation attack.
        ipguard_points: Boundary points per IPGuard fingerprint.
        ipguard_iterations: Adam steps of the IPGuard boundary search.
        ipguard_size: Largest side of an IPGuard point; the model's input
            side under the protocol when that is smaller.
        fpr: False-positive rate at which the true-positive rate is reported.
        iterations: Adam steps of every extraction, or None for the
            preset's own.
        watermark_steps: Adam steps of each watermark embedding.
        watermark_learning_rate: Adam's learning rate of the embeddings, or
            None for each method's default.
    """

    name: str
    protocol: str
    tasks: tuple[TaskPlan, ...]
    attacks: tuple[str, ...] = ATTACK_NAMES
    methods: tuple[str, ...] = METHODS
    finetune_steps: int = 500
    distill_steps: int = 500
    ipguard_points: int = 20
    ipguard_iterations: int = 100
    ipguard_size: int = 32
    fpr: float = 0.01
    iterations: int | None = None
    watermark_steps: int = 300
    watermark_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 1:
            raise InvalidInputError(f"invalid iterations {self.iterations!r}: expected an integer >= 1")
        if isinstance(self.watermark_steps, bool) or not isinstance(self.watermark_steps, int) or self.watermark_steps < 1:
            raise InvalidInputError(f"invalid watermark_steps {self.watermark_steps!r}: expected an integer >= 1, e.g. 200")
        for task in self.tasks:
            for attack in self.attacks_for(task):
                check_choice("attack", attack, ATTACK_NAMES)
        for method in self.methods:
            check_choice("method", method, METHODS)
        if any(method in DERIVED_METHODS for method in self.methods) and "critprint" not in self.methods:
            raise InvalidInputError("methods calibrated and query reuse critprint's critical images; add critprint")

    @property
    def watermark_methods(self) -> tuple[str, ...]:
        """The plan's watermarking methods, in :data:`WATERMARK_METHODS` order."""
        return tuple(method for method in WATERMARK_METHODS if method in self.methods)

    @property
    def fingerprint_methods(self) -> tuple[str, ...]:
        """The plan's fingerprinting methods, which need the attacked copies of the unwatermarked sources."""
        return tuple(method for method in self.methods if method not in WATERMARK_METHODS)

    def attacks_for(self, task: TaskPlan) -> tuple[str, ...]:
        """Return the attacks run on one task's sources: the task's own list, else the plan's."""
        return self.attacks if task.attacks is None else task.attacks

    @property
    def all_attacks(self) -> tuple[str, ...]:
        """Every attack some task runs, in :data:`ATTACK_NAMES` order."""
        used = {attack for task in self.tasks for attack in self.attacks_for(task)}
        return tuple(attack for attack in ATTACK_NAMES if attack in used)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a JSON-compatible dictionary."""
        data = asdict(self)
        data["tasks"] = [
            asdict(task) | {"references": list(task.references), "attacks": list(self.attacks_for(task))}
            for task in self.tasks
        ]
        return data


def _zoo_task(task: str, scale: int, attacks: tuple[str, ...] | None = None) -> TaskPlan:
    entries = [entry for entry in zoo.list_models() if entry.task == task and entry.scale == scale]
    return TaskPlan(
        task=task,
        scale=scale,
        sources=tuple(entry.name for entry in entries if entry.group == "source"),
        hard_negatives=tuple(entry.name for entry in entries if entry.group != "source"),
        attacks=attacks,
    )


def _full() -> BenchPlan:
    return BenchPlan(
        name="full",
        protocol="quick",
        tasks=(
            _zoo_task("denoise", 1),
            _zoo_task("sr", 4),
            *(_zoo_task(task, 1, OTHER_TASK_ATTACKS) for task in _OTHER_TASKS),
        ),
    )


_QUICK_WATERMARK_STEPS: Final = 15
"""Embedding steps of the quick plan: enough to run every job, not to embed well."""


def _quick() -> BenchPlan:
    return BenchPlan(
        name="quick",
        protocol="quick",
        tasks=(
            TaskPlan("denoise", 1, sources=("dncnn", "compact-dn"), hard_negatives=("dncnn-h",)),
            TaskPlan("sr", 4, sources=("compact-x4", "rcan-x4"), hard_negatives=("compact-x4-h",)),
        ),
        attacks=("prune", "finetune", "quantize"),
        finetune_steps=20,
        distill_steps=20,
        ipguard_points=8,
        ipguard_iterations=20,
        watermark_steps=_QUICK_WATERMARK_STEPS,
    )


def restrict_attacks(plan: BenchPlan, attacks: tuple[str, ...]) -> BenchPlan:
    """Return the plan with only ``attacks`` run, on every task that runs them.

    Raises:
        InvalidInputError: If an attack is unknown or no task of the plan runs it.
    """
    for attack in attacks:
        check_choice("attack", attack, plan.all_attacks)
    tasks = []
    for task in plan.tasks:
        task_attacks = tuple(attack for attack in plan.attacks_for(task) if attack in attacks)
        if task_attacks:
            tasks.append(replace(task, attacks=task_attacks))
    return replace(plan, tasks=tuple(tasks), attacks=tuple(attack for attack in ATTACK_NAMES if attack in attacks))


PLANS: Final[dict[str, Any]] = {"quick": _quick, "full": _full}


def get_plan(
    name: str, tasks: tuple[str, ...] | None = None, sources: tuple[str, ...] | None = None, **changes: Any
) -> BenchPlan:
    """Return the named plan, optionally restricted to some tasks and source models.

    Args:
        name: ``quick`` or ``full``.
        tasks: Task names to keep; all when None or empty.
        sources: Source models to keep (the references stay); all when None
            or empty. A task left with no source is dropped.
        changes: Further fields of :class:`BenchPlan` to set, such as
            ``protocol``, ``iterations`` or ``methods``.

    Raises:
        InvalidInputError: If the plan, a task, a method or a change is invalid.
    """
    check_choice("bench plan", name, PLANS)
    plan: BenchPlan = PLANS[name]()
    if tasks:
        known = tuple(task.task for task in plan.tasks)
        for task in tasks:
            check_choice("task", task, known)
        plan = replace(plan, tasks=tuple(t for t in plan.tasks if t.task in tasks))
    if sources:
        known = tuple(source for task in plan.tasks for source in task.sources)
        for source in sources:
            check_choice("source model", source, known)
        restricted = []
        for task in plan.tasks:
            chosen = tuple(source for source in task.sources if source in sources)
            if chosen:
                dropped = tuple(source for source in task.sources if source not in chosen)
                restricted.append(replace(task, sources=chosen, compared_sources=dropped + task.compared_sources))
        plan = replace(plan, tasks=tuple(restricted))
    return replace(plan, **changes) if changes else plan
