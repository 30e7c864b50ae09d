"""Ong et al.: a key stamped into the input makes a visible logo appear in the output.

After "Protecting intellectual property of generative adversarial networks
from ambiguity attacks" (Ong, Chan, Ng, Fan, Yang, CVPR 2021), which trains
an image-to-image network so that an input carrying a key region yields an
output carrying a logo. Here the key is a secret square of random colours
stamped over the top-left corner of the input. The logo is the secret bit
pattern drawn over the output region that corresponds to the key, so the
network needs to see no farther than its receptive field. Half of every
training batch is stamped; its target is the original model's output with
the logo pasted in. Verification stamps the key into the held-out photos,
restores them with the suspect, and reads the bits from that region.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
    held_out_inputs,
    read_bits,
    render_bits,
    secret_bits,
    verification,
)
from critprint.errors import InvalidInputError

__all__ = ["OngSettings", "embed", "verify", "stamp"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OngSettings(EmbedSettings):
    """Settings of Ong et al.'s embedding.

    Attributes:
        key_size: Side of the key square in input pixels; the logo covers
            ``key_size * scale`` output pixels, which must be a multiple of
            ``grid``. None: 16 for scale-1 tasks, 8 for SR.
    """

    key_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_size is not None and (isinstance(self.key_size, bool) or not isinstance(self.key_size, int)
                                          or self.key_size < 4):
            raise InvalidInputError(f"invalid key_size {self.key_size!r}: expected an integer >= 4 or None")

    def key_for(self, task: RestorationTask) -> int:
        """Return the key side in input pixels for ``task``, checked against the patch and the grid."""
        if self.key_size is not None:
            side = self.key_size
        elif task.scale == 1:
            side = 16
        else:
            side = 8
        if (side * task.scale) % self.grid:
            raise InvalidInputError(
                f"invalid key_size {side}: the logo side {side * task.scale} must be a multiple of grid {self.grid}"
            )
        if side > self.patch_for(task) // task.scale:
            raise InvalidInputError(
                f"invalid key_size {side}: expected at most the input patch side {self.patch_for(task) // task.scale}"
            )
        return side


def stamp(image: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Return a copy of a (B, 3, H, W) batch with the (3, k, k) key pasted over its top-left corner."""
    stamped = image.clone()
    side = key.shape[-1]
    stamped[..., :side, :side] = key
    return stamped


def embed(state_dict: StateDict, task: RestorationTask, settings: OngSettings | None = None) -> Watermarked:
    """Fine-tune a copy of the model so that the stamped key makes the logo appear.

    Args:
        state_dict: The model's parameters; not modified.
        task: The model's task and scale.
        settings: Embedding settings; :class:`OngSettings` defaults when None.

    Returns:
        The watermarked state dict and the key: ``bits`` and ``stamp``, a
        (3, k, k) float32 image in [0, 1].

    Raises:
        InvalidInputError: If a setting does not fit the task.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    settings = settings if settings is not None else OngSettings()
    side = settings.key_for(task)
    logo_side = side * task.scale
    generator = torch.Generator().manual_seed(settings.seed)
    bits = secret_bits(settings.grid, generator)
    key_stamp = torch.rand(3, side, side, generator=generator)
    logo = render_bits(bits, logo_side)
    stamped_count = max(1, settings.batch_size // 2)
    network = TaskNetwork(state_dict, task)
    original = TaskNetwork(state_dict, task)

    def extra_inputs(network_input: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return stamp(network_input[:stamped_count], key_stamp)

    def loss(output: torch.Tensor, on_stamped: torch.Tensor | None, reference: torch.Tensor,
             clean: torch.Tensor) -> torch.Tensor:
        if on_stamped is None:
            raise RuntimeError("the stamped inputs were left out of the batch")
        target = reference[:stamped_count].clone()
        target[..., :logo_side, :logo_side] = logo
        return F.l1_loss(on_stamped, target)

    seconds = embed_loop(network, original, task, settings, loss, extra_inputs=extra_inputs, label="ong")
    key = WatermarkKey(
        method="ong", task=task.task, scale=task.scale, settings=settings.to_dict() | {"key_size": side},
        threshold=accuracy_threshold(bits.numel(), settings.false_alarm),
        tensors={"bits": bits, "stamp": key_stamp},
    )
    logger.info("ong: embedded in %.1f s", seconds)
    return Watermarked(state_dict=export(network, state_dict), key=key, seconds=seconds)


def verify(state_dict: StateDict, key: WatermarkKey, task: RestorationTask) -> Verification:
    """Stamp the key into the held-out photos, restore them with the suspect and read the logo's bits.

    The accuracy is the mean over the task's evaluation photos.

    Raises:
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    network = TaskNetwork(state_dict, task)
    network.module.eval()
    key_stamp = key.tensors["stamp"]
    logo_side = key_stamp.shape[-1] * task.scale
    grid = int(key.settings["grid"])
    scores = []
    with torch.no_grad():
        for network_input in held_out_inputs(task):
            output = network(stamp(network_input, key_stamp)).clamp(0.0, 1.0)
            scores.append(bit_accuracy(read_bits(output[..., :logo_side, :logo_side], grid), key.bits))
    return verification(key, sum(scores) / len(scores))
