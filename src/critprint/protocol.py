"""The extraction protocol: every parameter that shapes a fingerprint.

A :class:`Protocol` is recorded in full in each fingerprint, so a suspect model
can be probed later with exactly the source's parameters and random draws.

Presets:

* ``paper``: the settings of "Fingerprinting Deep Image Restoration Models"
  (Quan et al., ICCV 2023): a 128 x 128 critical image, 5000 Adam iterations
  at learning rate 0.1, initial image drawn from N(0, 1), total-variation
  weight 1e-3, denoising noise sigma 1 on the [0, 1] scale, the image kept
  in [0, 1], 4-bin colour histograms and rotation-invariant uniform LGP with
  P = 16, R = 2, alpha 0.05 and sigma_h 0.015. For super-resolution the
  low-resolution input is the average-pooled image with no noise.
* ``quick``: the same objective on a 64 x 64 image for 500 iterations, for
  demos and tests on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from critprint.checks import check_choice, check_positive, check_range
from critprint.errors import InvalidInputError

__all__ = [
    "Task",
    "Constraint",
    "Objective",
    "FeatureSettings",
    "Protocol",
    "PRESETS",
    "TASKS",
    "get_protocol",
]

Task = Literal["denoise", "sr"]
TASKS: tuple[str, ...] = get_args(Task)

Constraint = Literal["none", "clamp"]
"""Rule that keeps the critical image in range during the optimisation.

``clamp`` projects it onto [0, 1] after every Adam step, so the objective is
solved over [0, 1] images as the paper states it. ``none`` leaves it
unconstrained, as the authors' published script does, and clamps only for
features and pictures. On the bundled DnCNN, ``none`` put its 10 %-pruned copy
at d / eta = 4.6 (judged independent) while ``clamp`` put it at 0.01; see
docs/method.md.
"""

Objective = Literal["minimise", "maximise"]
"""Whether the extraction minimises the objective (the method) or maximises it (MaxObj)."""


@dataclass(frozen=True)
class FeatureSettings:
    """Settings of the colour and local gradient pattern (LGP) histograms.

    Attributes:
        colour_bins: Bins per channel of the colour histogram.
        lgp_points: Number of LGP neighbours P.
        lgp_radius: Radius R of the LGP circle, in pixels.
        quantize: Round the clamped image to 8-bit levels before the
            histograms, so the features are those of the exported PNG.
    """

    colour_bins: int = 4
    lgp_points: int = 16
    lgp_radius: float = 2.0
    quantize: bool = True

    def __post_init__(self) -> None:
        if self.colour_bins < 1:
            raise InvalidInputError(f"invalid colour_bins {self.colour_bins!r}: expected an integer >= 1")
        if self.lgp_points < 4:
            raise InvalidInputError(f"invalid lgp_points {self.lgp_points!r}: expected an integer >= 4")
        check_positive("lgp_radius", self.lgp_radius)

    def length(self, channels: int) -> int:
        """Return the feature length L for an image with ``channels`` channels."""
        return channels * self.colour_bins + self.lgp_points + 2


@dataclass(frozen=True)
class Protocol:
    """Every parameter of one critical-image extraction and its decision.

    Attributes:
        name: The preset this protocol was made from, or a user's label.
        task: The restoration task whose degradation the objective uses.
        size: Side of the square critical image in pixels (the high-resolution
            side for super-resolution).
        iterations: Number of Adam steps.
        learning_rate: Adam learning rate.
        beta: Standard deviation of the initial image S0 ~ N(0, beta^2).
        tv_weight: Weight lambda of the total-variation term.
        noise_sigma: Standard deviation of the Gaussian noise the degradation
            adds, on the [0, 1] intensity scale; for super-resolution it is
            added to the low-resolution input.
        scale: Downsampling factor of the super-resolution degradation, 1 for
            other tasks.
        seed: Seed of the generator behind every random draw.
        constraint: How the image is kept in range during the optimisation.
        objective: ``"minimise"`` the objective (the method), or
            ``"maximise"`` it (the MaxObj ablation of the paper, which yields
            a smooth image the model restores badly).
        features: Histogram settings.
        alpha: Significance level of the chi-squared decision.
        sigma_h: Assumed standard deviation of the per-bin feature error.
    """

    name: str
    task: Task
    size: int
    iterations: int
    learning_rate: float = 0.1
    beta: float = 1.0
    tv_weight: float = 1e-3
    noise_sigma: float = 1.0
    scale: int = 1
    seed: int = 0
    constraint: Constraint = "clamp"
    objective: Objective = "minimise"
    features: FeatureSettings = field(default_factory=FeatureSettings)
    alpha: float = 0.05
    sigma_h: float = 0.015

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("constraint", self.constraint, get_args(Constraint))
        check_choice("objective", self.objective, get_args(Objective))
        if self.size < 8:
            raise InvalidInputError(f"invalid size {self.size!r}: expected an integer >= 8")
        if self.iterations < 1:
            raise InvalidInputError(f"invalid iterations {self.iterations!r}: expected an integer >= 1")
        check_positive("learning_rate", self.learning_rate)
        check_positive("beta", self.beta)
        check_positive("tv_weight", self.tv_weight, allow_zero=True)
        check_positive("noise_sigma", self.noise_sigma, allow_zero=True)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_positive("sigma_h", self.sigma_h)
        if self.scale < 1:
            raise InvalidInputError(f"invalid scale {self.scale!r}: expected an integer >= 1")
        if self.task != "sr" and self.scale != 1:
            raise InvalidInputError(f"invalid scale {self.scale!r} for task {self.task!r}: expected 1")
        if self.task == "sr" and self.size % self.scale != 0:
            raise InvalidInputError(
                f"invalid size {self.size} for scale {self.scale}: expected a multiple of the scale"
            )

    @property
    def input_size(self) -> int:
        """Side of the image the model receives (size / scale)."""
        return self.size // self.scale

    def replace(self, **changes: Any) -> Protocol:
        """Return a copy with the given fields changed and checked again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the protocol as a JSON-compatible dictionary."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the protocol as canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        """Build a protocol from :meth:`to_dict` output, rejecting unknown keys."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"invalid protocol: unknown keys {unknown}; expected keys from {sorted(known)}")
        values = dict(data)
        features = values.pop("features", {})
        return cls(features=FeatureSettings(**features), **values)


_PAPER = {"size": 128, "iterations": 5000}
_QUICK = {"size": 64, "iterations": 500}

PRESETS: dict[str, dict[str, Any]] = {"paper": _PAPER, "quick": _QUICK}
"""Named protocols, as the fields that differ from the :class:`Protocol` defaults."""


def get_protocol(name: str, task: Task, scale: int = 1) -> Protocol:
    """Return the named preset resolved for a task and scale.

    Args:
        name: One of ``"paper"`` or ``"quick"``.
        task: ``"denoise"`` or ``"sr"``.
        scale: The model's scale; must be 1 unless the task is ``"sr"``.

    Raises:
        InvalidInputError: If the name, task or scale is invalid.

    Example:
        >>> get_protocol("paper", "denoise").iterations
        5000
        >>> get_protocol("quick", "sr", scale=4).input_size
        16
    """
    check_choice("protocol", name, PRESETS)
    check_choice("task", task, TASKS)
    # The authors' published script feeds super-resolution models the pooled
    # image without noise; the noise sigma of 1 applies to denoising only.
    noise_sigma = 1.0 if task == "denoise" else 0.0
    return Protocol(name=name, task=task, scale=scale, noise_sigma=noise_sigma, **PRESETS[name])
