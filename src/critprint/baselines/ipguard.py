"""IPGuard fingerprints of restoration models turned into classifiers (ProjCL, PoolCL).

IPGuard (Cao, Jia, Gong, "IPGuard: Protecting intellectual property of deep
neural networks via fingerprinting the classification boundary", AsiaCCS
2021) fingerprints a classifier with inputs near its decision boundary and
the labels the classifier gives them. A suspect that gives the same label on
a large enough share of those inputs is judged derived from it. The paper
"Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV 2023) uses
it as a baseline after turning a restoration model into a classifier with one
of the heads of :mod:`critprint.baselines.heads`.

The boundary search starts from uniform random images in [0, 1], picks a
random class pair (i, j), i != j, for each, and minimises with Adam

    L(x) = |z_i - z_j| + ReLU(max_{t not in {i, j}} z_t - min(z_i, z_j) + k)

where z are the logits and k the margin: z_i and z_j become nearly equal and
both beat every other logit by k, so x lies on the boundary between classes i
and j. Points are clamped to [0, 1] after each step; all points form one
batch. The recorded label is the source's argmax on the final point.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from critprint.baselines.heads import BASELINE_NAMES, HEADS, Head, derived_seed, make_head, pool_side
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.models import ModelHandle

__all__ = [
    "IPGuardSettings",
    "IPGuardFingerprint",
    "classifier_logits",
    "ipguard_fingerprint",
    "match_rate",
    "threshold_from_negatives",
    "is_derived",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""Called as ``callback(step, total, loss)`` during a boundary search."""

# Steps between two progress reports.
_REPORT_EVERY = 10
# Points per forward pass when a suspect is checked.
_MATCH_BATCH = 32
# Exclusive upper bound on settings.seed, which keeps it a signed 64-bit integer.
_SEED_LIMIT = 2**63


@dataclass(frozen=True)
class IPGuardSettings:
    """Parameters of an IPGuard fingerprint of a restoration model.

    Attributes:
        head: ``"projection"`` (ProjCL) or ``"pool"`` (PoolCL).
        points: Number of boundary points.
        size: Side of each point in pixels; this is the model's input size
            (the low-resolution side for a super-resolution model).
        iterations: Adam steps of the boundary search; 0 keeps the random
            starting points, which is useful only as a control.
        learning_rate: Adam's learning rate.
        margin: IPGuard's k: the two target logits must beat every other
            logit by this much.
        classes: Number of classifier outputs; a square number for the pool
            head (k x k pooling), at least 3 so that a third class exists.
        seed: Seeds every random draw (starting points, class pairs,
            projection matrix); an integer in [0, 2**63).

    Raises:
        InvalidInputError: On construction, if a value is out of its domain.
    """

    head: str
    points: int = 20
    size: int = 32
    iterations: int = 100
    learning_rate: float = 0.01
    margin: float = 0.01
    classes: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject values out of their domain."""
        if self.head not in HEADS:
            listed = ", ".join(repr(name) for name in HEADS)
            raise InvalidInputError(f"invalid head {self.head!r}: expected one of {listed}")
        _check_int("points", self.points, 1, "use at least one boundary point")
        _check_int("size", self.size, 1, "use a positive side in pixels")
        _check_int("iterations", self.iterations, 0, "use 0 or more Adam steps")
        _check_int("classes", self.classes, 3, "use at least 3 classes (a pair and one other)")
        _check_int("seed", self.seed, 0, "use an integer in [0, 2**63)")
        if self.seed >= _SEED_LIMIT:
            raise InvalidInputError(f"invalid seed {self.seed}: use an integer in [0, 2**63)")
        _check_real("learning_rate", self.learning_rate, positive=True)
        _check_real("margin", self.margin, positive=False)
        if self.head == "pool" and pool_side(self.classes) is None:
            raise InvalidInputError(
                f"invalid classes {self.classes} for the pool head: it pools to k x k, "
                "so use a square number such as 100"
            )

    @property
    def baseline(self) -> str:
        """The paper's name of this baseline: ``"ProjCL"`` or ``"PoolCL"``."""
        return BASELINE_NAMES[self.head]


@dataclass(frozen=True, eq=False)
class IPGuardFingerprint:
    """An IPGuard fingerprint: boundary points and the source's labels on them.

    Instances compare by identity (tensors have no single truth value);
    compare ``points`` and ``labels`` with ``torch.equal``.

    Attributes:
        settings: The settings the points were searched with.
        points: (N, C, size, size) float32 CPU tensor in [0, 1].
        labels: (N,) int64 CPU tensor, the source's labels on ``points``.

    Raises:
        InvalidInputError: On construction, if the tensors do not fit each
            other or the settings.
    """

    settings: IPGuardSettings
    points: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        """Check the tensors' shapes and types against each other and the settings."""
        if not isinstance(self.settings, IPGuardSettings):
            raise InvalidInputError(
                f"invalid settings: expected IPGuardSettings, got {type(self.settings).__name__}"
            )
        points, labels, size = self.points, self.labels, self.settings.size
        if not isinstance(points, torch.Tensor) or points.ndim != 4 or points.shape[-2:] != (size, size):
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise InvalidInputError(
                f"invalid points of shape {shape}: expected (N, C, {size}, {size}) to match settings.size"
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != points.shape[:1]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InvalidInputError(
                f"invalid labels of shape {shape}: expected an int64 tensor of shape ({points.shape[0]},), "
                "one label per point"
            )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-compatible summary: settings, labels and a hash of the points.

        ``points_sha256`` is the SHA-256 of the points' float32 bytes in C
        order. It distinguishes two fingerprints' points without storing them.
        """
        points = self.points.detach().to("cpu", torch.float32).contiguous()
        return {
            "method": "ipguard",
            "baseline": self.settings.baseline,
            "settings": asdict(self.settings),
            "point_shape": list(points.shape),
            "labels": [int(label) for label in self.labels.tolist()],
            "points_sha256": hashlib.sha256(points.numpy().tobytes()).hexdigest(),
        }


def classifier_logits(handle: ModelHandle, images: torch.Tensor, settings: IPGuardSettings) -> torch.Tensor:
    """Return the logits of a model turned into a classifier by the settings' head.

    Gradients flow to ``images`` unless the caller disables them. The
    projection matrix depends only on ``settings.seed``, ``settings.classes``
    and the model's output shape.

    Args:
        handle: The model, from :func:`critprint.models.load_model`.
        images: (B, C, H, W) float batch; C must be the model's input channels.
        settings: Selects the head, the number of classes and the seed.

    Returns:
        (B, settings.classes) float32 logits.

    Raises:
        InvalidInputError: If ``images`` is not a (B, C, H, W) float tensor
            with the model's channels, or its side is below the model's
            minimum.
        IncompatibleModelError: If the model does not return a (B, C, H, W)
            image.
    """
    _check_settings(settings)
    _check_images(handle, images)
    return make_head(settings.head, settings.classes, settings.seed)(handle(images))


def ipguard_fingerprint(
    handle: ModelHandle,
    settings: IPGuardSettings,
    progress: ProgressCallback | None = None,
) -> IPGuardFingerprint:
    """Search boundary points of a model's classifier and record its labels on them.

    Every random draw comes from ``torch.Generator`` objects seeded from
    ``settings.seed``, never from the global generator, so the same model and
    settings give the same points bit for bit on the same machine and thread
    count.

    Args:
        handle: The source model.
        settings: All parameters of the search.
        progress: Optional callback, called every 10 steps and at the end
            with (step, total, loss), the loss summed over the points.

    Returns:
        The fingerprint, its tensors on the CPU.

    Raises:
        InvalidInputError: If ``settings`` is not an :class:`IPGuardSettings`
            or ``settings.size`` is below the model's minimum input size.
        IncompatibleModelError: If the model's output is not a (B, C, H, W)
            image, or the objective becomes NaN or infinite.
    """
    _check_settings(settings)
    _check_size(handle, settings.size)
    device = _device(handle)
    head = make_head(settings.head, settings.classes, settings.seed)
    count, classes = settings.points, settings.classes

    generator = torch.Generator().manual_seed(derived_seed(settings.seed, "points"))
    start_points = torch.rand((count, handle.input_channels, settings.size, settings.size), generator=generator)
    first = torch.randint(classes, (count,), generator=generator)
    # An offset in [1, classes) makes the second class uniform among the others.
    second = (first + torch.randint(1, classes, (count,), generator=generator)) % classes
    first, second = first.to(device), second.to(device)
    others = torch.ones((count, classes), dtype=torch.bool, device=device)
    rows = torch.arange(count, device=device)
    others[rows, first] = False
    others[rows, second] = False

    points = start_points.to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([points], lr=settings.learning_rate)
    started = time.perf_counter()
    loss_value = math.nan
    for step in range(1, settings.iterations + 1):
        loss = _boundary_loss(head(handle(points)), first, second, others, settings.margin).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            points.clamp_(0.0, 1.0)
        if step % _REPORT_EVERY == 0 or step == settings.iterations:
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise IncompatibleModelError(
                    f"model {handle.source} produced a non-finite IPGuard objective at step {step}; "
                    "it returns NaN or Inf for these inputs"
                )
            logger.debug("ipguard step %d/%d: loss %.4g", step, settings.iterations, loss_value)
            if progress is not None:
                progress(step, settings.iterations, loss_value)

    final = points.detach()
    with torch.no_grad():
        labels = _labels(handle, final, head)
    seconds = time.perf_counter() - started
    logger.info(
        "ipguard %s fingerprint of %s: %d points in %.1f s (%d steps, loss %.4g)",
        settings.baseline, handle.source, count, seconds, settings.iterations, loss_value,
    )
    return IPGuardFingerprint(
        settings=settings,
        points=final.to("cpu", torch.float32).contiguous(),
        labels=labels.to("cpu", torch.int64),
    )


def match_rate(handle: ModelHandle, fingerprint: IPGuardFingerprint) -> float:
    """Return the share of boundary points where a suspect gives the recorded label.

    The suspect is probed with the fingerprint's own head and seed, in
    batches, without gradients.

    NOTE: the fingerprint does not record the source's scale, so a suspect
    of another scale is not rejected. The head adapts to its output size,
    which gives it another projection matrix and a meaningless rate.

    Returns:
        A number in [0, 1]; 1.0 means every label agrees.

    Raises:
        InvalidInputError: If ``fingerprint`` is not an
            :class:`IPGuardFingerprint`, or the suspect's input channels or
            minimum size do not fit its points.
        IncompatibleModelError: If the suspect does not return a (B, C, H, W)
            image.
    """
    if not isinstance(fingerprint, IPGuardFingerprint):
        raise InvalidInputError(
            f"invalid fingerprint: expected IPGuardFingerprint, got {type(fingerprint).__name__}; "
            "create one with ipguard_fingerprint"
        )
    settings = fingerprint.settings
    points = fingerprint.points
    _check_images(handle, points)
    device = _device(handle)
    head = make_head(settings.head, settings.classes, settings.seed)
    matches = 0
    with torch.no_grad():
        for begin in range(0, points.shape[0], _MATCH_BATCH):
            batch = points[begin : begin + _MATCH_BATCH].to(device)
            labels = _labels(handle, batch, head).to("cpu")
            matches += int((labels == fingerprint.labels[begin : begin + _MATCH_BATCH]).sum())
    rate = matches / points.shape[0]
    logger.info(
        "ipguard %s match of %s: %d of %d points (%.3f)",
        settings.baseline, handle.source, matches, points.shape[0], rate,
    )
    return rate


def threshold_from_negatives(rates: Sequence[float]) -> float:
    """Return the verification threshold from match rates of unrelated pairs.

    Quan et al. (ICCV 2023) set each baseline's threshold to the smallest
    value under which every tested pair of different (independent) models is
    distinguished. A suspect is derived when its rate is strictly above the
    threshold, so that value is the largest negative rate. With no negative
    pairs the threshold is 0.0: any agreement at all counts as derived. If
    some independent pair agreed on every point the threshold is 1.0 and no
    suspect can be judged derived.

    Args:
        rates: Match rates, each in [0, 1], of pairs known to be independent.

    Raises:
        InvalidInputError: If a rate is not a finite number in [0, 1].

    Example:
        >>> threshold_from_negatives([0.1, 0.35, 0.2]), threshold_from_negatives([])
        (0.35, 0.0)
    """
    checked = [_check_rate("rate", rate) for rate in rates]
    return max(checked, default=0.0)


def is_derived(rate: float, threshold: float) -> bool:
    """Return whether a suspect with this match rate counts as derived: rate > threshold.

    Raises:
        InvalidInputError: If either value is not a finite number in [0, 1].

    Example:
        >>> is_derived(0.9, 0.35), is_derived(0.35, 0.35)
        (True, False)
    """
    return _check_rate("rate", rate) > _check_rate("threshold", threshold)


def _boundary_loss(
    logits: torch.Tensor, first: torch.Tensor, second: torch.Tensor, others: torch.Tensor, margin: float
) -> torch.Tensor:
    """Return the per-point IPGuard objective for the class pairs (first, second)."""
    z_first = logits.gather(1, first[:, None]).squeeze(1)
    z_second = logits.gather(1, second[:, None]).squeeze(1)
    z_other = logits.masked_fill(~others, -math.inf).amax(dim=1)
    return (z_first - z_second).abs() + torch.relu(z_other - torch.minimum(z_first, z_second) + margin)


def _labels(handle: ModelHandle, images: torch.Tensor, head: Head) -> torch.Tensor:
    logits = head(handle(images))
    if not torch.isfinite(logits).all():
        raise IncompatibleModelError(
            f"model {handle.source} returned NaN or Inf on the IPGuard points; it cannot be fingerprinted this way"
        )
    return logits.argmax(dim=1)


def _device(handle: ModelHandle) -> torch.device:
    parameter = next(iter(handle.module.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_settings(settings: object) -> None:
    if not isinstance(settings, IPGuardSettings):
        raise InvalidInputError(
            f"invalid settings: expected IPGuardSettings, got {type(settings).__name__}; "
            "build them with IPGuardSettings(head='projection') or head='pool'"
        )


def _check_size(handle: ModelHandle, size: int) -> None:
    if size < handle.minimum_size:
        raise InvalidInputError(
            f"invalid size {size}: {handle.source} ({handle.architecture}) needs inputs of at least "
            f"{handle.minimum_size} px; use size >= {handle.minimum_size}"
        )


def _check_images(handle: ModelHandle, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"invalid images: expected a (B, C, H, W) float tensor, got {type(images).__name__}")
    if images.ndim != 4 or not images.is_floating_point():
        described = f"{images.dtype} tensor of shape {tuple(images.shape)}"
        raise InvalidInputError(f"invalid images: expected a (B, C, H, W) float tensor, got {described}")
    if images.shape[1] != handle.input_channels:
        raise InvalidInputError(
            f"invalid images with {images.shape[1]} channels: {handle.source} takes {handle.input_channels}; "
            "probe a model with the channels of the source the points came from"
        )
    _check_size(handle, min(images.shape[-2:]))


def _check_int(name: str, value: object, low: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"invalid {name} {value!r}: {fix}")


def _check_real(name: str, value: object, *, positive: bool) -> None:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"invalid {name} {value!r}: use a finite number {bound}")
    if value < 0 or (positive and value == 0):
        raise InvalidInputError(f"invalid {name} {value!r}: use a finite number {bound}")


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"invalid {name} {value!r}: use a match rate, a number in [0, 1]")
    return float(value)
