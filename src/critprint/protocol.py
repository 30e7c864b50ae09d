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
* ``quick``: the same objective on a 64 x 64 image for 500 iterations.
* ``tuned`` (the default): ``quick`` with the per-task changes that
  ``critprint bench --study protocol`` chose (:data:`TUNED_CHANGES`), such as
  noise on the low-resolution input for super-resolution.

The paper covers denoising and super-resolution; for the other tasks the
presets pick the degradation parameters documented in docs/method.md and in
:data:`TASK_DEFAULTS`. For super-resolution the preset size is rounded down to
a multiple of the scale (126 and 63 for x3).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from critprint.checks import check_choice, check_positive, check_range
from critprint.errors import InvalidInputError

__all__ = [
    "Task",
    "Constraint",
    "Objective",
    "Schedule",
    "BlurKernel",
    "FeatureSettings",
    "Protocol",
    "PRESETS",
    "DEFAULT_PROTOCOL",
    "TASKS",
    "TASK_DEFAULTS",
    "TUNED_CHANGES",
    "get_protocol",
    "seeded_generator",
]

Task = Literal["denoise", "sr", "deblur", "lowlight", "derain", "jpeg", "custom"]
TASKS: tuple[str, ...] = get_args(Task)

BlurKernel = Literal["gaussian", "motion"]
"""Blur kernel of the deblurring degradation: isotropic Gaussian or linear motion."""

# Tasks whose degradation may change the image size (the model upscales).
_SCALED_TASKS = ("sr", "custom")

# A custom degradation is named as ``package.module:function``.
CUSTOM_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# Stream numbers of the generators derived from the seed (see seeded_generator).
MOTION_ANGLE_STREAM = 2

Constraint = Literal["none", "clamp"]
"""Rule that keeps the critical image in range during the optimisation.

``clamp`` projects it onto [0, 1] after every Adam step, so the objective is
solved over [0, 1] images as the paper states it. ``none`` leaves it
unconstrained, as the authors' published script does, and clamps only for
features and pictures. On the bundled DnCNN, ``none`` put its 10 %-pruned copy
at d / eta = 4.6 (judged independent) while ``clamp`` put it at 0.01; see
docs/method.md.
"""

Schedule = Literal["constant", "cosine"]
"""Rule for the Adam learning rate over the iterations.

``constant`` keeps it, as the paper does. ``cosine`` decays it from
``learning_rate`` towards 0 along half a cosine period over the iterations,
so the image settles by the last step instead of oscillating around its
optimum.
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
        learning_rate: Adam learning rate (the starting one under a schedule).
        beta: Standard deviation of the initial image S0 ~ N(0, beta^2).
        tv_weight: Weight lambda of the total-variation term.
        noise_sigma: Standard deviation of the Gaussian noise the degradation
            adds, on the [0, 1] intensity scale; for super-resolution it is
            added to the low-resolution input.
        scale: Downsampling factor of the super-resolution degradation (or
            of a custom one), 1 for other tasks.
        seed: Seed of the generator behind every random draw.
        constraint: How the image is kept in range during the optimisation.
        objective: ``"minimise"`` the objective (the method), or
            ``"maximise"`` it (the MaxObj ablation of the paper, which yields
            a smooth image the model restores badly).
        features: Histogram settings.
        schedule: Rule for the learning rate over the iterations.
        alpha: Significance level of the chi-squared decision.
        sigma_h: Assumed standard deviation of the per-bin feature error.
        blur_kernel: ``deblur``: ``"gaussian"`` or ``"motion"``.
        blur_sigma: ``deblur``: standard deviation of the Gaussian kernel, in
            pixels.
        blur_size: ``deblur``: side of the Gaussian kernel, an odd number of
            pixels.
        motion_length: ``deblur``: length of the motion kernel's line, in
            pixels.
        motion_angle: ``deblur``: angle of the motion kernel's line in
            degrees, counter-clockwise from the horizontal; None draws it
            uniformly in [0, 180) from the seed (:meth:`resolved` records the
            drawn value).
        lowlight_gamma: ``lowlight``: exponent g of D(X) = Norm(X^g).
        rain_density: ``derain``: probability that a pixel starts a streak.
        rain_length: ``derain``: streak length in pixels.
        rain_angle: ``derain``: streak angle in degrees, counter-clockwise from
            the horizontal (90 is vertical).
        rain_intensity: ``derain``: brightness a streak adds, [0, 1] scale.
        jpeg_quality: ``jpeg``: IJG quality 1 to 100 that scales the standard
            quantisation tables.
        custom_degradation: ``custom``: the user's degradation as
            ``package.module:function``; empty for other tasks.
        noise_map_level: Level of the constant noise-level map given to
            models that take one (DRUNet, FDnCNN), [0, 1] scale; None keeps
            the architecture's default (15/255). Registration records the
            level it used for such a model, the default included; None
            remains in records made before that, and for models without a
            map. Other models ignore it.
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
    # Fields added after the first release; their defaults let older records load.
    blur_kernel: BlurKernel = "gaussian"
    blur_sigma: float = 1.6
    blur_size: int = 11
    motion_length: int = 9
    motion_angle: float | None = None
    lowlight_gamma: float = 3.0
    rain_density: float = 0.01
    rain_length: int = 9
    rain_angle: float = 70.0
    rain_intensity: float = 0.5
    jpeg_quality: int = 10
    custom_degradation: str = ""
    noise_map_level: float | None = None
    schedule: Schedule = "constant"

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("constraint", self.constraint, get_args(Constraint))
        check_choice("objective", self.objective, get_args(Objective))
        check_choice("schedule", self.schedule, get_args(Schedule))
        if self.size < 8:
            raise InvalidInputError(f"invalid size {self.size!r}: expected an integer >= 8")
        if self.iterations < 1:
            raise InvalidInputError(f"invalid iterations {self.iterations!r}: expected an integer >= 1")
        check_positive("learning_rate", self.learning_rate)
        check_positive("beta", self.beta)
        check_positive("tv_weight", self.tv_weight, allow_zero=True)
        check_positive("noise_sigma", self.noise_sigma, allow_zero=True)
        if not math.isfinite(self.noise_sigma):
            raise InvalidInputError(f"invalid noise_sigma {self.noise_sigma!r}: expected a finite number >= 0")
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_positive("sigma_h", self.sigma_h)
        if self.scale < 1:
            raise InvalidInputError(f"invalid scale {self.scale!r}: expected an integer >= 1")
        if self.task not in _SCALED_TASKS and self.scale != 1:
            raise InvalidInputError(f"invalid scale {self.scale!r} for task {self.task!r}: expected 1")
        if self.size % self.scale != 0:
            raise InvalidInputError(
                f"invalid size {self.size} for scale {self.scale}: expected a multiple of the scale"
            )
        self._check_task_fields()

    def _check_task_fields(self) -> None:
        check_choice("blur_kernel", self.blur_kernel, get_args(BlurKernel))
        check_positive("blur_sigma", self.blur_sigma)
        if self.blur_size < 1 or self.blur_size % 2 == 0:
            raise InvalidInputError(f"invalid blur_size {self.blur_size!r}: expected an odd integer >= 1")
        if self.motion_length < 1:
            raise InvalidInputError(f"invalid motion_length {self.motion_length!r}: expected an integer >= 1")
        if self.motion_angle is not None and not math.isfinite(self.motion_angle):
            raise InvalidInputError(f"invalid motion_angle {self.motion_angle!r}: expected a finite number or None")
        check_positive("lowlight_gamma", self.lowlight_gamma)
        if not 0.0 <= self.rain_density <= 1.0:
            raise InvalidInputError(f"invalid rain_density {self.rain_density!r}: expected a number in [0, 1]")
        if self.rain_length < 1:
            raise InvalidInputError(f"invalid rain_length {self.rain_length!r}: expected an integer >= 1")
        if not math.isfinite(self.rain_angle):
            raise InvalidInputError(f"invalid rain_angle {self.rain_angle!r}: expected a finite number")
        check_positive("rain_intensity", self.rain_intensity, allow_zero=True)
        if not 1 <= self.jpeg_quality <= 100:
            raise InvalidInputError(f"invalid jpeg_quality {self.jpeg_quality!r}: expected an integer in [1, 100]")
        if self.noise_map_level is not None:
            check_positive("noise_map_level", self.noise_map_level, allow_zero=True)
            if not math.isfinite(self.noise_map_level):
                raise InvalidInputError(
                    f"invalid noise_map_level {self.noise_map_level!r}: expected a finite number >= 0 or None"
                )
        if self.task == "custom":
            if not CUSTOM_SPEC.match(self.custom_degradation):
                raise InvalidInputError(
                    f"invalid custom_degradation {self.custom_degradation!r}: expected 'package.module:function' "
                    "naming your degradation (--custom-degradation on the command line)"
                )
        elif self.custom_degradation:
            raise InvalidInputError(
                f"invalid custom_degradation {self.custom_degradation!r} for task {self.task!r}: "
                "expected '' (it applies to task 'custom' only)"
            )

    @property
    def input_size(self) -> int:
        """Side of the image the model receives (size / scale)."""
        return self.size // self.scale

    def resolved(self) -> Protocol:
        """Return a copy with every random parameter drawn from the seed.

        Today this is the angle of a motion kernel left as None: it is drawn
        uniformly in [0, 180) degrees from :func:`seeded_generator` and
        rounded to 0.01 degree, so the recorded protocol states the kernel
        that was used. A protocol with nothing left to draw is returned as is.
        """
        if self.task == "deblur" and self.blur_kernel == "motion" and self.motion_angle is None:
            return self.replace(motion_angle=draw_motion_angle(self.seed))
        return self

    def learning_rate_at(self, step: int) -> float:
        """Return the learning rate of Adam step ``step``, counted from 1.

        Example:
            >>> cosine = Protocol(name="x", task="denoise", size=8, iterations=3, schedule="cosine")
            >>> [round(cosine.learning_rate_at(step), 3) for step in (1, 2, 3)]
            [0.1, 0.075, 0.025]
        """
        if self.schedule == "constant":
            return self.learning_rate
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / self.iterations))

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

PRESETS: dict[str, dict[str, Any]] = {"paper": _PAPER, "quick": _QUICK, "tuned": _QUICK}
"""Named protocols, as the fields that differ from the :class:`Protocol` defaults."""

DEFAULT_PROTOCOL = "tuned"
"""The preset ``register`` and the library use when none is named."""

_LGP_8_1: dict[str, Any] = {"lgp_points": 8, "lgp_radius": 1.0}
_COSINE_0_15: dict[str, Any] = {"learning_rate": 0.15, "schedule": "cosine"}

TUNED_CHANGES: dict[str, dict[str, Any]] = {
    # Each entry is the setting ``critprint bench --study protocol`` chose for the task;
    # docs/benchmarks.md ("Protocol study") gives the numbers behind each.
    "denoise": {"features": {"colour_bins": 16, **_LGP_8_1}},
    "sr": {"noise_sigma": 0.3, **_COSINE_0_15, "features": _LGP_8_1},
    "deblur": {"features": {"colour_bins": 16, **_LGP_8_1}},
    "lowlight": {"tv_weight": 0.0, "features": {"colour_bins": 2}},
    "derain": {"noise_sigma": 0.3, **_COSINE_0_15, "features": _LGP_8_1},
    "jpeg": {"features": {"colour_bins": 2}},
}
"""Changes the ``tuned`` preset makes to ``quick`` per task; ``features`` contains :class:`FeatureSettings` fields."""

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # The paper's denoising noise: sigma 1 on the [0, 1] scale.
    "denoise": {"noise_sigma": 1.0},
    # The authors' published script feeds SR models the pooled image without noise.
    "sr": {"noise_sigma": 0.0},
    # A moderate Gaussian blur (sigma 1.6 px on 11 px, about 3 sigma each side) and
    # light noise (sigma 0.01, about 2.5/255); see docs/method.md.
    "deblur": {"noise_sigma": 0.01, "blur_kernel": "gaussian", "blur_sigma": 1.6, "blur_size": 11},
    # Norm(X^3) as the design states; no noise.
    "lowlight": {"noise_sigma": 0.0, "lowlight_gamma": 3.0},
    # Streaks from 1 % of the pixels, 9 px long at 70 degrees, adding 0.5.
    "derain": {
        "noise_sigma": 0.0, "rain_density": 0.01, "rain_length": 9, "rain_angle": 70.0, "rain_intensity": 0.5,
    },
    # Quality 10, the strongest setting of the usual artefact-removal benchmarks (10 to 40).
    "jpeg": {"noise_sigma": 0.0, "jpeg_quality": 10},
    # The user's function is the whole degradation unless noise is asked for.
    "custom": {"noise_sigma": 0.0},
}
"""Degradation fields each task's presets set, on top of :data:`PRESETS`."""


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """Return a CPU generator for one named use of a protocol's seed.

    The extraction's own generator, seeded with ``seed``, draws the initial
    image and the per-step noise. Fixed draws of a degradation (the rain
    layer, a motion angle, a custom degradation's draws) come from a second
    generator per use, so they neither shift that sequence nor repeat it.

    Args:
        seed: The protocol's seed.
        stream: A small integer naming the use.
    """
    mixed = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 1) % (2**63)
    return torch.Generator().manual_seed(mixed)


def draw_motion_angle(seed: int) -> float:
    """Return the motion-kernel angle in degrees that ``seed`` draws, in [0, 180)."""
    generator = seeded_generator(seed, MOTION_ANGLE_STREAM)
    value = float(torch.rand((), generator=generator, dtype=torch.float64))
    return round(value * 180.0, 2) % 180.0


def get_protocol(name: str, task: Task, scale: int = 1, **changes: Any) -> Protocol:
    """Return the named preset resolved for a task and scale.

    Args:
        name: One of ``"paper"``, ``"quick"`` or ``"tuned"``.
        task: One of :data:`TASKS`.
        scale: The model's scale; must be 1 unless the task is ``"sr"`` or
            ``"custom"``. The preset size is rounded down to a multiple of it.
        changes: Further fields to set, such as ``custom_degradation``
            (required for ``"custom"``).

    Raises:
        InvalidInputError: If the name, task, scale or a change is invalid.

    Example:
        >>> get_protocol("paper", "denoise").iterations
        5000
        >>> get_protocol("quick", "sr", scale=4).input_size
        16
        >>> get_protocol("quick", "sr", scale=3).size
        63
    """
    check_choice("protocol", name, PRESETS)
    check_choice("task", task, TASKS)
    if not isinstance(scale, int) or scale < 1:
        raise InvalidInputError(f"invalid scale {scale!r}: expected an integer >= 1")
    fields: dict[str, Any] = {**PRESETS[name], **TASK_DEFAULTS[task]}
    if name == "tuned":
        tuned = dict(TUNED_CHANGES.get(task, {}))
        if "features" in tuned:
            tuned["features"] = FeatureSettings(**tuned["features"])
        fields.update(tuned)
    fields["size"] -= fields["size"] % scale
    fields.update(changes)
    return Protocol(name=name, task=task, scale=scale, **fields).resolved()
