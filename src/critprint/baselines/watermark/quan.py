"""Quan et al.: a secret trigger image makes the model draw a copyright image.

After "Watermarking deep neural networks in image processing" (Quan, Teng,
Chen, Ji, IEEE TNNLS 2020). The model is fine-tuned so that a random noise
image, the trigger, is mapped to a chosen copyright image while every other
input is restored as before. Here the copyright image is the secret bit
pattern drawn as black and white cells over the whole output, and the trigger
has the side of a training patch, so it runs in the same batch as the
patches. Verification feeds the trigger to the suspect and reads the bits
back from its output.

WeakWM of "Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV
2023) is this method with the watermark loss weighted down until the PSNR
loss on held-out photos is negligible; see :data:`WEAKWM_WEIGHT`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F

from critprint.attacks.quality import RestorationTask, TaskNetwork
from critprint.baselines.watermark.common import (
    EmbedSettings,
    StateDict,
    Verification,
    WatermarkKey,
    Watermarked,
    accuracy_threshold,
    bit_accuracy,
    embed_loop,
    export,
    read_bits,
    render_bits,
    secret_bits,
    verification,
)

__all__ = ["WEAKWM_WEIGHT", "weak_settings", "embed", "verify"]

logger = logging.getLogger(__name__)

WEAKWM_WEIGHT = 0.05
"""Watermark loss weight of WeakWM, 1/20 of Quan's default 1.0.

Chosen by measurement on the held-out ``coffee`` crop. With Quan's
embedding, weight 0.2 cost the zoo's Compact x4 model 0.46 dB after 300
steps. Weight 0.1 changed it by +0.005 dB after 150 steps, and weight 0.2
changed DnCNN by +0.05 dB after 200 steps without embedding the mark. The
benchmark's fidelity row shows the cost at this weight
(docs/benchmarks.md, "Watermarking baselines").
"""


def weak_settings(settings: EmbedSettings | None = None) -> EmbedSettings:
    """Return WeakWM's settings: ``settings`` (default :class:`EmbedSettings`) with weight :data:`WEAKWM_WEIGHT`."""
    return replace(settings if settings is not None else EmbedSettings(), weight=WEAKWM_WEIGHT)


def embed(
    state_dict: StateDict, task: RestorationTask, settings: EmbedSettings | None = None, method: str = "quan"
) -> Watermarked:
    """Fine-tune a copy of the model to map a secret trigger to the copyright image.

    Args:
        state_dict: The model's parameters, as read by
            ``critprint.models.read_state_dict``; not modified.
        task: The model's task and scale (its photos are not used; the
            owner's photos are ``settings.photos``).
        settings: Embedding settings; :class:`EmbedSettings` defaults when None.
        method: The name recorded in the key, ``quan`` or ``weakwm``.

    Returns:
        The watermarked state dict and the key: ``bits`` and ``trigger``,
        a (3, h, w) float32 image in [0, 1] (the input side).

    Raises:
        InvalidInputError: If a setting does not fit the task.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    settings = settings if settings is not None else EmbedSettings()
    side = settings.patch_for(task)
    generator = torch.Generator().manual_seed(settings.seed)
    bits = secret_bits(settings.grid, generator)
    trigger = torch.rand(1, 3, side // task.scale, side // task.scale, generator=generator)
    copyright_image = render_bits(bits, side).unsqueeze(0)
    network = TaskNetwork(state_dict, task)
    original = TaskNetwork(state_dict, task)

    def loss(output: torch.Tensor, on_trigger: torch.Tensor | None, reference: torch.Tensor,
             clean: torch.Tensor) -> torch.Tensor:
        if on_trigger is None:
            raise RuntimeError("the trigger was left out of the batch")
        return F.l1_loss(on_trigger, copyright_image)

    seconds = embed_loop(network, original, task, settings, loss, extra_inputs=lambda _x, _r: trigger, label=method)
    key = WatermarkKey(
        method=method, task=task.task, scale=task.scale, settings=settings.to_dict(),
        threshold=accuracy_threshold(bits.numel(), settings.false_alarm),
        tensors={"bits": bits, "trigger": trigger[0]},
    )
    watermarked = export(network, state_dict)
    logger.info("%s: embedded in %.1f s", method, seconds)
    return Watermarked(state_dict=watermarked, key=key, seconds=seconds)


def verify(state_dict: StateDict, key: WatermarkKey, task: RestorationTask) -> Verification:
    """Feed the key's trigger to the suspect and compare its output's bit pattern with the secret.

    Raises:
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    network = TaskNetwork(state_dict, task)
    network.module.eval()
    with torch.no_grad():
        # A copy, because some networks scale their input in place (spandrel's RCAN).
        output = network(key.tensors["trigger"].unsqueeze(0).clone()).clamp(0.0, 1.0)
    grid = int(key.settings["grid"])
    return verification(key, bit_accuracy(read_bits(output, grid), key.bits))
