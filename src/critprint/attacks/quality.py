"""Restoration quality of a state dict: the PSNR an attack must preserve.

An attack on a fingerprinted model is only worth studying when the attacked
model still does its job, so every attack in :mod:`critprint.attacks` is
judged by the PSNR change it causes on photos the zoo models never trained on.
This module builds a network from a state dict, degrades photos the way the
model's task does, and scores the restored output. Denoisers get Gaussian
noise and super-resolution models antialiased bicubic downscaling. Deblurring,
low-light, deraining and JPEG models get the degradation the zoo trained them
on, :func:`critprint.zoo.train.degrade_task`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from critprint.errors import IncompatibleModelError, InvalidInputError, ModelLoadError
from critprint.zoo.photos import PHOTO_NAMES, load_photo
from critprint.zoo.train import PROTOCOL_TASKS, add_gaussian_noise, degrade_task, downscale_bicubic, psnr

__all__ = [
    "RestorationTask",
    "measure_psnr",
    "module_from_state_dict",
    "degrade_batch",
    "run_network",
    "output_conv_names",
    "TaskNetwork",
]

logger = logging.getLogger(__name__)

_TASKS = ("denoise", "sr", *PROTOCOL_TASKS)


@dataclass(frozen=True)
class RestorationTask:
    """What a model restores, and the photos used to attack and score it.

    Attributes:
        task: ``"denoise"``, ``"sr"``, ``"deblur"``, ``"lowlight"``,
            ``"derain"`` or ``"jpeg"``.
        scale: Upscaling factor; 2 or more for ``sr``, 1 for the others.
        noise_sigma: Standard deviation of the Gaussian noise that denoisers
            remove, on the [0, 1] scale; unused for ``sr``.
        train_photos: Bundled photos (see ``critprint.zoo.photos.PHOTO_NAMES``)
            the attacker fine-tunes or distils on.
        eval_photos: Bundled photos the PSNR is measured on.
        eval_crop: Side in pixels of the centre crop of each evaluation photo,
            a multiple of ``scale``. A smaller photo is cropped to its largest
            square whose side is a multiple of ``scale``.
        seed: Seed of every random draw: evaluation noise or rain, training
            patches, training noise or rain, weight noise and
            re-initialisation.
        finetune_steps: Optimiser steps of the fine-tuning attacks
            (``finetune`` and the fine-tuning phase of ``channel-prune``).
        distill_steps: Optimiser steps of the ``distill`` attack.

    Raises:
        InvalidInputError: If a field is outside its domain.
    """

    task: str
    scale: int = 1
    noise_sigma: float = 25 / 255
    train_photos: tuple[str, ...] = ("chelsea",)
    eval_photos: tuple[str, ...] = ("coffee",)
    eval_crop: int = 192
    seed: int = 0
    finetune_steps: int = 500
    distill_steps: int = 500

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            expected = ", ".join(repr(task) for task in _TASKS)
            raise InvalidInputError(f"invalid task {self.task!r}: expected one of {expected}")
        if not isinstance(self.scale, int) or self.scale < 1:
            raise InvalidInputError(f"invalid scale {self.scale!r}: expected an integer >= 1")
        if self.task != "sr" and self.scale != 1:
            raise InvalidInputError(
                f"invalid scale {self.scale} for task {self.task!r}: only sr models upscale, so expected 1"
            )
        if self.task == "sr" and self.scale < 2:
            raise InvalidInputError(f"invalid scale {self.scale} for task 'sr': expected an integer >= 2")
        if self.task == "denoise" and not (math.isfinite(self.noise_sigma) and self.noise_sigma > 0):
            raise InvalidInputError(
                f"invalid noise_sigma {self.noise_sigma!r}: expected a number > 0 on the [0, 1] scale, e.g. 25 / 255"
            )
        for field_name, photos in (("train_photos", self.train_photos), ("eval_photos", self.eval_photos)):
            if not photos:
                raise InvalidInputError(f"invalid {field_name} (): name at least one of {', '.join(PHOTO_NAMES)}")
            for photo in photos:
                if photo not in PHOTO_NAMES:
                    raise InvalidInputError(
                        f"invalid photo {photo!r} in {field_name}: expected one of {', '.join(PHOTO_NAMES)}"
                    )
        if not isinstance(self.eval_crop, int) or self.eval_crop < 8 * self.scale or self.eval_crop % self.scale:
            raise InvalidInputError(
                f"invalid eval_crop {self.eval_crop!r}: expected an integer multiple of the scale {self.scale} "
                f"and at least {8 * self.scale}"
            )
        for field_name, steps in (("finetune_steps", self.finetune_steps), ("distill_steps", self.distill_steps)):
            if not isinstance(steps, int) or steps < 1:
                raise InvalidInputError(f"invalid {field_name} {steps!r}: expected an integer >= 1")


def _descriptor(state_dict: dict[str, torch.Tensor]):  # noqa: ANN202 - spandrel's descriptor type is private
    """Build spandrel's image-model descriptor of a state dict, in float32 on the CPU."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    if not isinstance(state_dict, dict) or not state_dict:
        raise InvalidInputError(
            f"invalid state dict of type {type(state_dict).__name__}: expected a non-empty dict of tensors, "
            "e.g. from critprint.models.read_state_dict"
        )
    try:
        # spandrel may rewrite the mapping it is given, so pass a copy.
        descriptor = ModelLoader(device="cpu").load_from_state_dict(dict(state_dict))
    except UnsupportedModelError:
        raise ModelLoadError(
            "unknown architecture: spandrel detects none of its architectures in this state dict; "
            "attack a checkpoint of a supported architecture"
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelLoadError(
            f"the state dict is a {descriptor.purpose} model ({descriptor.architecture.id}); "
            "critprint attacks image-to-image restoration models only"
        )
    descriptor.model.float()
    return descriptor


def module_from_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build the network of a state dict with spandrel, in float32 and eval mode.

    Raises:
        InvalidInputError: If ``state_dict`` is not a non-empty dict.
        ModelLoadError: If spandrel detects no image-to-image architecture.
    """
    module = _descriptor(state_dict).model
    module.eval()
    return module


class TaskNetwork:
    """A spandrel network built from a state dict, checked against a task.

    Attributes:
        module: The float32 network (mode as left by the caller).
        architecture: spandrel's architecture id.
        multiple_of: Inputs are padded to a multiple of this.
        scale: Output size / input size.

    Raises:
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model's scale or channels do not fit
            the task.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], task: RestorationTask) -> None:
        descriptor = _descriptor(state_dict)
        if descriptor.scale != task.scale:
            raise IncompatibleModelError(
                f"the model ({descriptor.architecture.id}) upscales by {descriptor.scale}, but the task has scale "
                f"{task.scale}; pass RestorationTask(task={'sr' if descriptor.scale > 1 else 'denoise'!r}, "
                f"scale={descriptor.scale})"
            )
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise IncompatibleModelError(
                f"the model maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
                "the attacks need an RGB (3 to 3 channel) model"
            )
        self.module: nn.Module = descriptor.model
        self.architecture: str = descriptor.architecture.id
        self.multiple_of: int = descriptor.size_requirements.multiple_of
        self.scale: int = descriptor.scale
        self._call = descriptor._call_fn  # noqa: SLF001 - adds generated inputs such as noise maps

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Run the network on a (B, 3, H, W) batch, padding to its multiple and cropping back."""
        return run_network(self.module, image, self.multiple_of, self.scale, self._call)


def run_network(
    module: nn.Module,
    image: torch.Tensor,
    multiple_of: int = 1,
    scale: int = 1,
    call: object | None = None,
) -> torch.Tensor:
    """Run ``module`` on ``image`` padded to ``multiple_of`` and crop the output back.

    Args:
        module: The network.
        image: A (B, C, H, W) batch.
        multiple_of: Padding multiple of the input's height and width.
        scale: Output size / input size.
        call: spandrel's call function ``(module, image) -> output``, or None
            to call the module directly.
    """
    height, width = image.shape[-2:]
    pad_bottom = -height % multiple_of
    pad_right = -width % multiple_of
    if pad_bottom or pad_right:
        mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
        image = F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)
    output = call(module, image) if callable(call) else module(image)
    return output[..., : height * scale, : width * scale]


def degrade_batch(task: RestorationTask, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make the network input of a clean (B, 3, H, W) batch in [0, 1].

    Denoisers get ``clean`` plus N(0, noise_sigma^2) noise, not clipped; SR
    models get the antialiased bicubic downscale by ``task.scale``, clamped.
    The other tasks get the degradation their zoo models trained on,
    :func:`critprint.zoo.train.degrade_task`, with its random parts (noise,
    rain layers) drawn from ``generator``.
    """
    if task.task == "denoise":
        return add_gaussian_noise(clean, task.noise_sigma, generator)
    if task.task in PROTOCOL_TASKS:
        return degrade_task(task.task, clean, generator)
    return downscale_bicubic(clean, task.scale)


def _centre_crop(photo: torch.Tensor, side: int, multiple: int) -> torch.Tensor:
    """Crop the centre square of (3, H, W), at most ``side`` and a multiple of ``multiple``."""
    side = min(side, photo.shape[1], photo.shape[2])
    side -= side % multiple
    top = (photo.shape[1] - side) // 2
    left = (photo.shape[2] - side) // 2
    return photo[:, top : top + side, left : left + side]


def _eval_pairs(task: RestorationTask) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (network input, clean target) for each evaluation photo, seeded by ``task.seed``."""
    generator = torch.Generator().manual_seed(task.seed)
    for name in task.eval_photos:
        clean = _centre_crop(load_photo(name), task.eval_crop, task.scale).unsqueeze(0)
        yield degrade_batch(task, clean, generator), clean


def measure_psnr(state_dict: dict[str, torch.Tensor], task: RestorationTask) -> float:
    """Return the mean PSNR in dB of the model restoring the degraded evaluation photos.

    Each photo of ``task.eval_photos`` is centre-cropped to ``task.eval_crop``,
    degraded by :func:`degrade_batch` (random parts drawn from a generator
    seeded ``task.seed``), restored, clamped to [0, 1] and compared with the
    clean crop.

    Raises:
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model's scale or channels do not fit
            ``task``.
    """
    network = TaskNetwork(state_dict, task)
    network.module.eval()
    scores = []
    with torch.no_grad():
        for network_input, clean in _eval_pairs(task):
            restored = network(network_input).clamp(0.0, 1.0)
            scores.append(psnr(restored, clean))
    value = sum(scores) / len(scores)
    logger.debug("%s: PSNR %.3f dB on %s", network.architecture, value, ", ".join(task.eval_photos))
    return value


def output_conv_names(network: TaskNetwork) -> tuple[str, ...]:
    """Return the parameter names of the convolution that runs last, the one producing the image.

    The order of execution is recorded with forward hooks on a small input,
    because neither the registration order nor a file's key order (safetensors
    sorts keys alphabetically) needs to match the data flow.
    """
    module = network.module
    calls: list[str] = []
    hooks = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            hooks.append(child.register_forward_hook(lambda *_args, _name=name: calls.append(_name)))
    was_training = module.training
    try:
        module.eval()
        side = max(32, network.multiple_of)
        with torch.no_grad():
            network(torch.zeros(1, 3, side, side))
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    if not calls:
        return ()
    prefix = f"{calls[-1]}." if calls[-1] else ""
    return tuple(f"{prefix}{suffix}" for suffix in ("weight", "bias"))
