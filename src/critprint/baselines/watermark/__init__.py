"""Watermarking baselines for image-restoration models: Zhang, Quan, Ong and WeakWM.

"Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV 2023)
compares its non-invasive fingerprint with three invasive watermarking
methods and a deliberately weak one. Each method here fine-tunes a copy of
a model so that it carries a secret message, returns the watermarked
weights with the owner's key, and checks suspects with the key:

- ``zhang`` (:mod:`.zhang`): an invisible mark in every output, read by an
  extractor network.
- ``quan`` (:mod:`.quan`): a secret trigger image is restored into a
  copyright image.
- ``ong`` (:mod:`.ong`): a key stamped into the input makes a logo appear.
- ``weakwm``: ``quan`` with the watermark loss weighted down to
  :data:`WEAKWM_WEIGHT`.

Every verification reads the secret bits back and compares the bit accuracy
with a binomial threshold (see :mod:`.common`); :func:`fidelity` measures
what the watermark costs in PSNR on held-out photos.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from critprint.attacks.quality import RestorationTask
from critprint.baselines.watermark import ong, quan, zhang
from critprint.baselines.watermark.common import (
    OWNER_PHOTOS,
    EmbedSettings,
    Fidelity,
    StateDict,
    Verification,
    WatermarkKey,
    Watermarked,
    accuracy_threshold,
    fidelity,
    load_key,
    save_key,
)
from critprint.baselines.watermark.ong import OngSettings
from critprint.baselines.watermark.quan import WEAKWM_WEIGHT
from critprint.baselines.watermark.zhang import ZhangSettings
from critprint.checks import check_choice
from critprint.errors import InvalidInputError

__all__ = [
    "WATERMARK_METHODS",
    "WEAKWM_WEIGHT",
    "OWNER_PHOTOS",
    "EmbedSettings",
    "ZhangSettings",
    "OngSettings",
    "WatermarkKey",
    "Watermarked",
    "Verification",
    "Fidelity",
    "default_settings",
    "embed_watermark",
    "verify_watermark",
    "fidelity",
    "accuracy_threshold",
    "save_key",
    "load_key",
]

WATERMARK_METHODS: Final[tuple[str, ...]] = ("zhang", "quan", "ong", "weakwm")
"""The watermarking methods, by name."""


def default_settings(method: str, **changes: object) -> EmbedSettings:
    """Return the default settings of a method with some fields changed.

    ``weakwm`` gets :data:`WEAKWM_WEIGHT` unless ``weight`` is among the changes.

    Raises:
        InvalidInputError: If the method is unknown or a change is invalid.
    """
    check_choice("watermark method", method, WATERMARK_METHODS)
    base: EmbedSettings
    if method == "zhang":
        base = ZhangSettings()
    elif method == "ong":
        base = OngSettings()
    elif method == "weakwm":
        base = EmbedSettings(weight=WEAKWM_WEIGHT)
    else:
        base = EmbedSettings()
    return replace(base, **changes) if changes else base  # type: ignore[arg-type]


def embed_watermark(
    method: str, state_dict: StateDict, task: RestorationTask, settings: EmbedSettings | None = None
) -> Watermarked:
    """Watermark a model with one method; ``settings`` default to :func:`default_settings`.

    Raises:
        InvalidInputError: If the method is unknown or the settings do not fit
            the method or task.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    check_choice("watermark method", method, WATERMARK_METHODS)
    settings = settings if settings is not None else default_settings(method)
    expected = {"zhang": ZhangSettings, "ong": OngSettings}.get(method, EmbedSettings)
    if not isinstance(settings, expected):
        raise InvalidInputError(
            f"invalid settings {type(settings).__name__} for {method}: expected {expected.__name__}, "
            f"e.g. default_settings({method!r})"
        )
    if method == "zhang":
        return zhang.embed(state_dict, task, settings)  # type: ignore[arg-type]
    if method == "ong":
        return ong.embed(state_dict, task, settings)  # type: ignore[arg-type]
    return quan.embed(state_dict, task, settings, method=method)


def verify_watermark(state_dict: StateDict, key: WatermarkKey, task: RestorationTask) -> Verification:
    """Check a suspect model for the watermark of ``key``.

    Raises:
        InvalidInputError: If the key's task or scale differs from ``task``.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    if (key.task, key.scale) != (task.task, task.scale):
        raise InvalidInputError(
            f"invalid task {task.task!r} x{task.scale} for a key of {key.task!r} x{key.scale}; "
            "verify with the key's own task"
        )
    if key.method == "zhang":
        return zhang.verify(state_dict, key, task)
    if key.method == "ong":
        return ong.verify(state_dict, key, task)
    return quan.verify(state_dict, key, task)
