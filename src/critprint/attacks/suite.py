"""The attack suite: named attacks with calibrated strength and a PSNR report.

The paper "Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV
2023) tests fingerprints
against modified copies whose restoration quality drops by at most 1 dB. Each
attack here is registered in :data:`ATTACKS` under a fixed name, and
:func:`run_attack` applies it to a state dict, measures the PSNR change on
held-out photos, and, for attacks with a tunable strength, halves the
strength until the drop fits the budget.

NOTE: SPAN recomputes its inference kernels (``eval_conv``) from its training
branches on every eval-mode call, so on SPAN an attack acts through the branch
weights; the stored ``eval_conv`` values are ignored when the model runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from critprint.attacks.distillation import distill
from critprint.attacks.finetune import check_learning_rate, finetune
from critprint.attacks.noise import add_weight_noise, check_sigma, half_precision
from critprint.attacks.pruning import channel_prune, prune_magnitude
from critprint.attacks.quality import RestorationTask, measure_psnr
from critprint.attacks.quantization import check_bits, quantize
from critprint.errors import InvalidInputError

__all__ = ["AttackOutcome", "AttackSpec", "ATTACKS", "run_attack"]

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AttackOutcome:
    """Result of one attack run: the strength used and the PSNR change it caused.

    Attributes:
        attack: The attack's name in :data:`ATTACKS`.
        parameter: The name of its strength parameter, e.g. ``"fraction"``.
        strength: The strength of the returned (last) try.
        psnr_before_db: PSNR of the source model in dB.
        psnr_after_db: PSNR of the attacked model in dB.
        psnr_change_db: ``psnr_after_db - psnr_before_db``; negative is worse.
        within_budget: Whether ``psnr_change_db >= -max_drop_db``.
        tried: (strength, PSNR change in dB) of every try, in order.
        seconds: Wall time of the whole run, measurements included.
    """

    attack: str
    parameter: str
    strength: float
    psnr_before_db: float
    psnr_after_db: float
    psnr_change_db: float
    within_budget: bool
    tried: tuple[tuple[float, float], ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-compatible dictionary (``tried`` as a list of pairs)."""
        record = dataclasses.asdict(self)
        record["tried"] = [list(pair) for pair in self.tried]
        return record


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite.

    Attributes:
        name: The attack's name, the key in :data:`ATTACKS`.
        description: One line on what it does.
        parameter: The name of its strength parameter.
        default: The starting strength (for ``prune``, the denoiser's; see
            ``sr_default``).
        in_paper: Whether the paper evaluates this attack.
        apply: ``(state_dict, strength, task) -> attacked state dict``.
        calibrated: Whether :func:`run_attack` may halve the strength to meet
            the PSNR budget.
        sr_default: The starting strength for SR models, when it differs.
        check: Validates a strength and raises ``InvalidInputError``.
    """

    name: str
    description: str
    parameter: str
    default: float
    in_paper: bool
    apply: Callable[[StateDict, float, RestorationTask], StateDict]
    calibrated: bool = True
    sr_default: float | None = None
    check: Callable[[float], object] | None = None

    def default_for(self, task: RestorationTask) -> float:
        """Return the starting strength for ``task``."""
        if task.task == "sr" and self.sr_default is not None:
            return self.sr_default
        return self.default


def _check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1):
        raise InvalidInputError(f"invalid fraction {fraction!r}: expected a number in (0, 1), e.g. 0.1")
    return float(fraction)


def _check_unit(strength: float) -> float:
    if strength != 1.0:
        raise InvalidInputError(f"invalid strength {strength!r} for half: it has no strength; pass None or 1.0")
    return 1.0


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(
            name="prune",
            description="zero the smallest-magnitude fraction of all kernel weights (global magnitude pruning)",
            parameter="fraction",
            default=0.10,
            sr_default=0.05,
            in_paper=True,
            apply=lambda state_dict, strength, task: prune_magnitude(state_dict, strength),
            check=_check_fraction,
        ),
        AttackSpec(
            name="finetune",
            description="fine-tune on the model's own task with Adam and an L1 loss (strength: learning rate)",
            parameter="learning_rate",
            default=1e-4,
            in_paper=True,
            apply=lambda state_dict, strength, task: finetune(state_dict, task, strength),
            check=check_learning_rate,
        ),
        AttackSpec(
            name="quantize",
            description="per-tensor symmetric integer quantization of every kernel (strength: bits)",
            parameter="bits",
            default=8,
            in_paper=False,
            apply=lambda state_dict, strength, task: quantize(state_dict, int(strength)),
            calibrated=False,
            check=check_bits,
        ),
        AttackSpec(
            name="weight-noise",
            description="add Gaussian noise of sigma times each kernel's std to every kernel",
            parameter="sigma",
            default=0.05,
            in_paper=False,
            apply=lambda state_dict, strength, task: add_weight_noise(state_dict, strength, seed=task.seed),
            check=check_sigma,
        ),
        AttackSpec(
            name="half",
            description="round every weight to float16 and back",
            parameter="none",
            default=1.0,
            in_paper=False,
            apply=lambda state_dict, strength, task: half_precision(state_dict),
            calibrated=False,
            check=_check_unit,
        ),
        AttackSpec(
            name="channel-prune",
            description="zero the weakest fraction of output channels of each hidden convolution, then fine-tune",
            parameter="fraction",
            default=0.1,
            in_paper=False,
            apply=lambda state_dict, strength, task: channel_prune(state_dict, task, strength),
            check=_check_fraction,
        ),
        AttackSpec(
            name="distill",
            description="train a freshly initialised network of the same architecture to imitate the source",
            parameter="learning_rate",
            default=1e-3,
            in_paper=False,
            apply=lambda state_dict, strength, task: distill(state_dict, task, strength),
            calibrated=False,
            check=check_learning_rate,
        ),
    )
}
"""The attacks by name."""


def _same_layout(source: StateDict, attacked: StateDict, name: str) -> None:
    """Raise RuntimeError if an attack changed keys, shapes or dtypes (a bug, not a user error)."""
    if list(attacked) != list(source):
        raise RuntimeError(f"attack {name} changed the state dict's keys")
    for key, tensor in source.items():
        if attacked[key].shape != tensor.shape or attacked[key].dtype != tensor.dtype:
            raise RuntimeError(f"attack {name} changed the shape or dtype of {key}")


def run_attack(
    name: str,
    state_dict: StateDict,
    task: RestorationTask,
    strength: float | None = None,
    calibrate: bool = True,
    max_drop_db: float = 1.0,
    max_tries: int = 4,
    progress: Callable[[str], None] | None = None,
) -> tuple[StateDict, AttackOutcome]:
    """Apply the attack ``name`` and report the PSNR change it causes.

    With ``calibrate`` and an attack whose strength can be lowered (``prune``,
    ``finetune``, ``weight-noise``, ``channel-prune``), a try whose PSNR drop
    exceeds ``max_drop_db`` is followed by one at half the strength, up to
    ``max_tries`` tries; the last try is returned, and ``within_budget`` says
    whether it met the budget. Other attacks are applied once.

    Args:
        name: A key of :data:`ATTACKS`.
        state_dict: The source model's parameters, as read by
            ``critprint.models.read_state_dict``; not modified.
        task: The task, photos and seed the PSNR is measured with.
        strength: The starting strength; the attack's default when None
            (``prune``: 0.10 for scale-1 models, 0.05 for SR).
        calibrate: Halve the strength while the drop is too large.
        max_drop_db: The PSNR budget in dB, > 0.
        max_tries: Most tries when calibrating, >= 1.
        progress: Called with a one-line message after each step.

    Returns:
        The attacked state dict (same keys, order, shapes and dtypes) and
        its :class:`AttackOutcome`.

    Raises:
        InvalidInputError: If the name, strength, budget or tries are invalid.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    if name not in ATTACKS:
        raise InvalidInputError(f"unknown attack {name!r}: expected one of {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    if strength is None:
        strength = spec.default_for(task)
    if spec.check is not None:
        spec.check(strength)
    strength = float(strength)
    if not (isinstance(max_drop_db, (int, float)) and math.isfinite(max_drop_db) and max_drop_db > 0):
        raise InvalidInputError(f"invalid max_drop_db {max_drop_db!r}: expected a number of dB > 0, e.g. 1.0")
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise InvalidInputError(f"invalid max_tries {max_tries!r}: expected an integer >= 1")

    def report(message: str) -> None:
        logger.info(message)
        if progress is not None:
            progress(message)

    start = time.perf_counter()
    before = measure_psnr(state_dict, task)
    report(f"{name}: source PSNR {before:.2f} dB")
    tries_allowed = max_tries if calibrate and spec.calibrated else 1
    tried: list[tuple[float, float]] = []
    while True:
        attacked = spec.apply(state_dict, strength, task)
        _same_layout(state_dict, attacked, name)
        after = measure_psnr(attacked, task)
        change = after - before
        tried.append((strength, change))
        report(
            f"{name}: try {len(tried)}/{tries_allowed}, {spec.parameter} {strength:g}: "
            f"PSNR {after:.2f} dB ({change:+.2f} dB)"
        )
        if change >= -max_drop_db or len(tried) >= tries_allowed:
            break
        strength /= 2
    within = change >= -max_drop_db
    if not within:
        logger.warning(
            "%s: PSNR drop %.2f dB exceeds the %.2f dB budget after %d tries", name, -change, max_drop_db, len(tried)
        )
    outcome = AttackOutcome(
        attack=name,
        parameter=spec.parameter,
        strength=strength,
        psnr_before_db=before,
        psnr_after_db=after,
        psnr_change_db=change,
        within_budget=within,
        tried=tuple(tried),
        seconds=time.perf_counter() - start,
    )
    return attacked, outcome
