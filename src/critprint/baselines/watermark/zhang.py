"""Zhang et al.: every output carries an invisible watermark that a small extractor recovers.

After "Model watermarking for image processing networks" (Zhang et al., AAAI
2020) and "Deep model intellectual property protection via deep watermarking"
(Zhang et al., IEEE TPAMI 2021). The model is fine-tuned together with an
extractor network. The model's outputs must stay close to the original
model's, and the extractor must read the secret bits from them. It must also
read all zeros ("blank") from the original model's outputs and from clean
photos, so that an unwatermarked model does not pass. The extractor ends in a global
average, so it reads the same bits from any crop size and position. Its
weights are part of the owner's key. Verification restores the held-out
photos with the suspect and runs the extractor on the results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from critprint.attacks.finetune import check_learning_rate
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
    secret_bits,
    verification,
)
from critprint.errors import InvalidInputError

__all__ = ["ZhangSettings", "Extractor", "embed", "verify", "extract_bits"]

logger = logging.getLogger(__name__)

_EXTRACTOR_PREFIX = "extractor."
_HIGH_PASS_GAIN = 10.0
"""Scales the high-pass residual (a few hundredths on photos) to about the range of an image."""


@dataclass(frozen=True)
class ZhangSettings(EmbedSettings):
    """Settings of Zhang et al.'s embedding.

    The watermark loss, a binary cross-entropy, starts at about 0.69 per bit,
    far above the task's L1 loss, which starts at 0. Hence the smaller default
    weight. Measured on the Compact x4 model of the zoo after 300 steps: at
    weight 0.05 it carries the mark at a PSNR change of -0.03 dB, and at 1.0
    it loses 12 dB because the mark becomes visible.

    During training the extractor reads each output patch without a border
    of ``margin`` pixels. Without it a denoiser learned to hide the mark
    along the patch borders, where zero padding gives it away: the zoo's
    DnCNN then read correctly on 48-pixel inputs and as a coin toss on the
    192-pixel verification crop.

    Attributes:
        weight: Weight of the watermark loss; 0.05 by default.
        extractor_width: Channels of the extractor's convolutions, >= 4.
        extractor_learning_rate: Adam's learning rate for the extractor, in (0, 1).
        margin: Output pixels left out on each side of a training patch
            before the extractor reads it, >= 0.
    """

    weight: float = 0.05
    extractor_width: int = 32
    extractor_learning_rate: float = 3e-3
    margin: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        width = self.extractor_width
        if isinstance(width, bool) or not isinstance(width, int) or width < 4:
            raise InvalidInputError(f"invalid extractor_width {width!r}: expected an integer >= 4, e.g. 32")
        check_learning_rate(self.extractor_learning_rate)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise InvalidInputError(f"invalid margin {self.margin!r}: expected an integer >= 0, e.g. 8")


class Extractor(nn.Module):
    """Reads ``bits`` logits from a (B, 3, H, W) image.

    The image's high-pass residual (the image minus its 5 x 5 box blur),
    where an invisible mark lives and the photo's content matters least,
    goes through three convolutions and a 1 x 1 projection, then a global mean.
    """

    def __init__(self, width: int, bits: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, bits, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return (B, bits) logits; positive reads as 1."""
        residual = image - F.avg_pool2d(image, 5, stride=1, padding=2, count_include_pad=False)
        return self.features(_HIGH_PASS_GAIN * residual).mean(dim=(2, 3))


def embed(state_dict: StateDict, task: RestorationTask, settings: ZhangSettings | None = None) -> Watermarked:
    """Fine-tune a copy of the model and train an extractor that reads the secret bits from its outputs.

    Args:
        state_dict: The model's parameters; not modified.
        task: The model's task and scale.
        settings: Embedding settings; :class:`ZhangSettings` defaults when None.

    Returns:
        The watermarked state dict and the key: ``bits`` and the extractor's
        weights (names prefixed ``extractor.``).

    Raises:
        InvalidInputError: If a setting does not fit the task.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    settings = settings if settings is not None else ZhangSettings()
    side = settings.patch_for(task)
    margin = settings.margin
    if side - 2 * margin < 16:
        raise InvalidInputError(
            f"invalid margin {margin}: the patch side {side} leaves {side - 2 * margin} pixels; expected at least 16"
        )
    inner = slice(margin, side - margin)
    generator = torch.Generator().manual_seed(settings.seed)
    bits = secret_bits(settings.grid, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        extractor = Extractor(settings.extractor_width, bits.numel())
    network = TaskNetwork(state_dict, task)
    original = TaskNetwork(state_dict, task)

    def loss(output: torch.Tensor, _extra: torch.Tensor | None, reference: torch.Tensor,
             clean: torch.Tensor) -> torch.Tensor:
        marked = F.binary_cross_entropy_with_logits(extractor(output[..., inner, inner]), bits.expand(len(output), -1))
        blank_inputs = torch.cat([reference, clean])[..., inner, inner]
        blank = F.binary_cross_entropy_with_logits(
            extractor(blank_inputs), torch.zeros(len(blank_inputs), bits.numel())
        )
        return marked + blank

    extractor.train()
    seconds = embed_loop(network, original, task, settings, loss, extra_parameters=list(extractor.parameters()),
                         extra_learning_rate=settings.extractor_learning_rate, label="zhang")
    extractor.eval()
    tensors = {"bits": bits} | {
        _EXTRACTOR_PREFIX + name: tensor.detach().clone() for name, tensor in extractor.state_dict().items()
    }
    key = WatermarkKey(
        method="zhang", task=task.task, scale=task.scale, settings=settings.to_dict(),
        threshold=accuracy_threshold(bits.numel(), settings.false_alarm), tensors=tensors,
    )
    logger.info("zhang: embedded in %.1f s", seconds)
    return Watermarked(state_dict=export(network, state_dict), key=key, seconds=seconds)


def _extractor(key: WatermarkKey) -> Extractor:
    extractor = Extractor(int(key.settings["extractor_width"]), key.bits.numel())
    weights = {name[len(_EXTRACTOR_PREFIX) :]: tensor for name, tensor in key.tensors.items()
               if name.startswith(_EXTRACTOR_PREFIX)}
    extractor.load_state_dict(weights)
    extractor.eval()
    return extractor


def extract_bits(image: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
    """Return the bits the key's extractor reads from a (B, 3, H, W) image in [0, 1].

    The result is a (B, bits) float tensor of 0 and 1.
    """
    with torch.no_grad():
        return (_extractor(key)(image) > 0).float()


def verify(state_dict: StateDict, key: WatermarkKey, task: RestorationTask) -> Verification:
    """Restore the held-out photos with the suspect and read the secret bits with the key's extractor.

    The accuracy is the mean over the task's evaluation photos.

    Raises:
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    network = TaskNetwork(state_dict, task)
    network.module.eval()
    extractor = _extractor(key)
    scores = []
    with torch.no_grad():
        for network_input in held_out_inputs(task):
            output = network(network_input).clamp(0.0, 1.0)
            scores.append(bit_accuracy((extractor(output) > 0).float(), key.bits))
    return verification(key, sum(scores) / len(scores))
