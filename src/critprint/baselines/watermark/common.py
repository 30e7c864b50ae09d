"""Shared parts of the watermarking baselines: settings, keys, bit patterns, embedding loop, fidelity.

Every method here hides the same kind of message: ``grid * grid`` secret
bits, half of them ones. Verification reads them back from a suspect model,
as a grid of black and white cells in an image (Quan, Ong) or as the logits
of an extractor network (Zhang). The verification statistic is the
bit accuracy, the share of bits read correctly. A model that carries no
watermark reads as a coin toss, so the threshold is the smallest accuracy
that ``grid * grid`` fair coin tosses reach with probability at most
``false_alarm`` (a binomial tail). Because the bits are balanced, a model
that reads all zeros or all ones scores exactly 0.5.

Embedding fine-tunes a copy of the model with Adam on random patches of the
owner's photos. The task loss pulls the output towards the original model's
output on the same input (not towards the clean patch), so the fidelity cost
measured afterwards is the watermark's alone and not that of training on
other photos.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from critprint.attacks.finetune import check_learning_rate, default_patch_size, export_state_dict
from critprint.attacks.quality import RestorationTask, TaskNetwork, degrade_batch, measure_psnr
from critprint.errors import FingerprintFormatError, InvalidInputError
from critprint.fingerprint import atomic_write_bytes
from critprint.zoo.photos import PHOTO_NAMES, TRAIN_PHOTOS, load_photo
from critprint.zoo.train import fold_reparameterized_convs, sample_patches

__all__ = [
    "OWNER_PHOTOS",
    "StateDict",
    "EmbedSettings",
    "WatermarkKey",
    "Watermarked",
    "Verification",
    "Fidelity",
    "secret_bits",
    "render_bits",
    "read_bits",
    "bit_accuracy",
    "accuracy_threshold",
    "verification",
    "embed_loop",
    "fidelity",
    "held_out_inputs",
    "export",
    "save_key",
    "load_key",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

OWNER_PHOTOS: tuple[str, ...] = ("astronaut", "rocket", "stereo_motorcycle")
"""Photos the owner embeds with: training photos of the zoo, none of them held out (``chelsea`` is the thief's)."""

_KEY_METADATA = "critprint-watermark"
_NOISE_SEED_OFFSET = 1_000_003
_LOG_INTERVAL_STEPS = 50
_SEED_LIMIT = 2**63


@dataclass(frozen=True)
class EmbedSettings:
    """Settings every watermark embedding shares.

    Attributes:
        steps: Adam steps of the embedding fine-tune, at least 1.
        learning_rate: Adam's learning rate for the model, in (0, 1).
        weight: Weight of the watermark loss against the task loss, > 0.
        batch_size: Patches per step, at least 1.
        patch_size: Ground-truth patch side (output pixels), a multiple of
            the scale; 48 for scale-1 tasks and 64 for x4 SR when None.
        photos: Bundled photos the owner embeds with.
        grid: The secret message is ``grid * grid`` bits, drawn as a
            ``grid`` x ``grid`` pattern; an even number >= 4.
        false_alarm: Largest chance that a model without the watermark
            passes verification by luck, in (0, 0.5).
        seed: Seeds the secret bits, the key material, the patches and the
            noise; an integer in [0, 2**63).

    Raises:
        InvalidInputError: If a field is outside its domain.
    """

    steps: int = 300
    learning_rate: float = 2e-4
    weight: float = 1.0
    batch_size: int = 4
    patch_size: int | None = None
    photos: tuple[str, ...] = OWNER_PHOTOS
    grid: int = 8
    false_alarm: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"invalid {name} {value!r}: expected an integer >= 1, e.g. 200")
        check_learning_rate(self.learning_rate)
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise InvalidInputError(f"invalid weight {self.weight!r}: expected a finite number > 0, e.g. 1.0")
        if self.patch_size is not None and (not isinstance(self.patch_size, int) or self.patch_size < 8):
            raise InvalidInputError(f"invalid patch_size {self.patch_size!r}: expected an integer >= 8 or None")
        if not self.photos or any(photo not in PHOTO_NAMES for photo in self.photos):
            raise InvalidInputError(
                f"invalid photos {self.photos!r}: expected names from {', '.join(PHOTO_NAMES)}, e.g. {OWNER_PHOTOS!r}"
            )
        held_out = [photo for photo in self.photos if photo not in TRAIN_PHOTOS]
        if held_out:
            raise InvalidInputError(
                f"invalid photos {self.photos!r}: {held_out[0]!r} is held out for scoring; use {', '.join(TRAIN_PHOTOS)}"
            )
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 4 or self.grid % 2:
            raise InvalidInputError(f"invalid grid {self.grid!r}: expected an even integer >= 4, e.g. 8")
        if not (isinstance(self.false_alarm, (int, float)) and 0 < self.false_alarm < 0.5):
            raise InvalidInputError(f"invalid false_alarm {self.false_alarm!r}: expected a number in (0, 0.5), e.g. 1e-6")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < _SEED_LIMIT:
            raise InvalidInputError(f"invalid seed {self.seed!r}: expected an integer in [0, 2**63)")

    def patch_for(self, task: RestorationTask) -> int:
        """Return the ground-truth patch side for ``task``, checked against its scale."""
        side = default_patch_size(task) if self.patch_size is None else self.patch_size
        if side % task.scale or side // task.scale < 8:
            raise InvalidInputError(
                f"invalid patch_size {side}: expected a multiple of the scale {task.scale} "
                f"of at least {8 * task.scale} pixels"
            )
        return side

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dictionary."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class WatermarkKey:
    """The owner's secret: what verification needs besides the suspect model.

    Attributes:
        method: ``zhang``, ``quan``, ``ong`` or ``weakwm``.
        task: The task's name.
        scale: The task's scale.
        settings: The embedding settings, as a dictionary.
        threshold: Bit accuracy at or above which a suspect is judged watermarked.
        tensors: The key material: always ``bits`` (the secret message, 0 or
            1, float32), plus per method the trigger, the key stamp or the
            extractor's weights (names prefixed ``extractor.``).
    """

    method: str
    task: str
    scale: int
    settings: dict[str, Any]
    threshold: float
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def bits(self) -> torch.Tensor:
        """The secret message, a float32 tensor of 0 and 1 of length grid * grid."""
        return self.tensors["bits"]


@dataclass(frozen=True)
class Verification:
    """The result of checking one suspect model for one watermark.

    Attributes:
        method: The watermarking method.
        accuracy: Share of the secret bits read correctly from the suspect.
        threshold: The key's threshold.
        verified: True when ``accuracy >= threshold``.
    """

    method: str
    accuracy: float
    threshold: float
    verified: bool


@dataclass(frozen=True)
class Fidelity:
    """The fidelity cost of a watermark: PSNR on held-out photos before and after.

    Attributes:
        psnr_before_db: PSNR of the original model in dB.
        psnr_after_db: PSNR of the watermarked model in dB.
        psnr_change_db: ``psnr_after_db - psnr_before_db``; negative is worse.
        photos: The held-out photos (task's ``eval_photos``).
    """

    psnr_before_db: float
    psnr_after_db: float
    psnr_change_db: float
    photos: tuple[str, ...]


@dataclass(frozen=True)
class Watermarked:
    """A watermarked model and its key.

    Attributes:
        state_dict: The watermarked parameters, same keys, shapes and dtypes
            as the original.
        key: The secret needed to verify it.
        seconds: Wall time of the embedding.
    """

    state_dict: StateDict
    key: WatermarkKey
    seconds: float


# Bits and patterns ----------------------------------------------------------


def secret_bits(grid: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``grid * grid`` bits, exactly half of them 1, in a random order (float32)."""
    count = grid * grid
    bits = torch.zeros(count)
    bits[torch.randperm(count, generator=generator)[: count // 2]] = 1.0
    return bits


def render_bits(bits: torch.Tensor, side: int) -> torch.Tensor:
    """Draw the bits as a (3, side, side) image of white (1) and black (0) cells, row by row.

    ``side`` must be a multiple of the grid side.
    """
    grid = math.isqrt(bits.numel())
    if side % grid:
        raise InvalidInputError(f"invalid side {side}: expected a multiple of the grid side {grid}")
    cells = bits.reshape(1, 1, grid, grid).float()
    return F.interpolate(cells, scale_factor=side // grid, mode="nearest")[0].expand(3, -1, -1).contiguous()


def read_bits(image: torch.Tensor, grid: int) -> torch.Tensor:
    """Read a bit pattern from (3, H, W) or (B, 3, H, W): 1 where a cell's mean grey level exceeds 0.5."""
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    cells = F.adaptive_avg_pool2d(batch.float().mean(dim=1, keepdim=True), grid)
    return (cells.flatten(1) > 0.5).float().squeeze(0)


def bit_accuracy(read: torch.Tensor, bits: torch.Tensor) -> float:
    """Return the share of positions where ``read`` equals ``bits``, averaged over a leading batch axis."""
    return float((read == bits).float().mean())


def accuracy_threshold(bits: int, false_alarm: float) -> float:
    """Return the smallest k / bits such that P(Binomial(bits, 1/2) >= k) <= false_alarm.

    >>> accuracy_threshold(64, 1e-6)
    0.796875
    """
    tail = 0.0
    for correct in range(bits, -1, -1):
        tail += math.comb(bits, correct) / 2.0**bits
        if tail > false_alarm:
            return (correct + 1) / bits
    return 0.0


def verification(key: WatermarkKey, accuracy: float) -> Verification:
    """Return the verdict of one measured bit accuracy against the key's threshold."""
    return Verification(method=key.method, accuracy=accuracy, threshold=key.threshold, verified=accuracy >= key.threshold)


# Embedding ------------------------------------------------------------------

ExtraInputs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
"""``(network input, original output) -> extra inputs run in the same batch``, or None."""

WatermarkLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(output, output on the extra inputs, original output, clean patch) -> watermark loss``."""


def embed_loop(
    network: TaskNetwork,
    original: TaskNetwork,
    task: RestorationTask,
    settings: EmbedSettings,
    loss: WatermarkLoss,
    extra_inputs: ExtraInputs | None = None,
    extra_parameters: Sequence[nn.Parameter] = (),
    extra_learning_rate: float = 1e-3,
    label: str = "watermark",
) -> float:
    """Fine-tune ``network`` in place with task loss plus ``settings.weight`` times the watermark loss.

    Each step crops ``settings.batch_size`` patches from ``settings.photos``,
    degrades them for the task, and runs the network on them together with
    the extra inputs, in one batch. The task loss is the L1 distance to the
    frozen ``original``'s output. ``extra_parameters`` (an extractor) train
    with the same Adam at ``extra_learning_rate``. Random draws come from
    generators seeded by ``settings.seed`` inside a forked global state, so a
    run is deterministic for a given torch build and thread count.

    Returns:
        The training seconds.
    """
    patch_size = settings.patch_for(task)
    photos = [load_photo(name) for name in settings.photos]
    patch_generator = torch.Generator().manual_seed(settings.seed)
    noise_generator = torch.Generator().manual_seed(settings.seed + _NOISE_SEED_OFFSET)
    module = network.module
    original.module.eval()
    for parameter in original.module.parameters():
        parameter.requires_grad_(False)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": list(module.parameters()), "lr": settings.learning_rate}]
    if extra_parameters:
        groups.append({"params": list(extra_parameters), "lr": extra_learning_rate})
    optimizer = torch.optim.Adam(groups)
    start = time.perf_counter()
    running = [0.0, 0.0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        module.train()
        try:
            for step in range(1, settings.steps + 1):
                clean = sample_patches(photos, settings.batch_size, patch_size, patch_generator)
                network_input = degrade_batch(task, clean, noise_generator)
                # Some networks scale their input in place (spandrel's RCAN), so each call gets its own copy.
                with torch.no_grad():
                    reference = original(network_input.clone())
                extra = extra_inputs(network_input, reference) if extra_inputs is not None else None
                batch = network_input.clone() if extra is None else torch.cat([network_input, extra])
                output = network(batch)
                normal, on_extra = output[: len(network_input)], (None if extra is None else output[len(network_input) :])
                task_loss = F.l1_loss(normal, reference)
                watermark_loss = loss(normal, on_extra, reference, clean)
                total = task_loss + settings.weight * watermark_loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                running[0] += task_loss.item()
                running[1] += watermark_loss.item()
                if step % _LOG_INTERVAL_STEPS == 0 or step == settings.steps:
                    interval = (step - 1) % _LOG_INTERVAL_STEPS + 1
                    logger.info(
                        "%s step %d/%d: task loss %.5f, watermark loss %.5f, %.1f s elapsed", label, step,
                        settings.steps, running[0] / interval, running[1] / interval, time.perf_counter() - start,
                    )
                    running = [0.0, 0.0]
        finally:
            fold_reparameterized_convs(module)
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            for parameter in extra_parameters:
                parameter.requires_grad_(False)
    return time.perf_counter() - start


def export(network: TaskNetwork, reference: StateDict) -> StateDict:
    """Return the trained network's state dict in the layout of ``reference``."""
    return export_state_dict(network.module, reference)


def held_out_inputs(task: RestorationTask) -> list[torch.Tensor]:
    """Return the degraded centre crops of the task's evaluation photos, each (1, 3, h, w).

    The crops, degradation and seed are those of
    :func:`critprint.attacks.measure_psnr`: side ``task.eval_crop`` (output
    pixels), noise or downscaling drawn from a generator seeded ``task.seed``.
    """
    generator = torch.Generator().manual_seed(task.seed)
    inputs = []
    for name in task.eval_photos:
        photo = load_photo(name)
        side = min(task.eval_crop, photo.shape[1], photo.shape[2])
        side -= side % task.scale
        top, left = (photo.shape[1] - side) // 2, (photo.shape[2] - side) // 2
        clean = photo[:, top : top + side, left : left + side].unsqueeze(0)
        inputs.append(degrade_batch(task, clean, generator))
    return inputs


# Fidelity -------------------------------------------------------------------


def fidelity(original: StateDict, watermarked: StateDict, task: RestorationTask) -> Fidelity:
    """Return the PSNR change the watermark causes on the task's held-out evaluation photos.

    Both models are scored with :func:`critprint.attacks.measure_psnr` (the
    same crop, noise and seed as the attack suite's budget).
    """
    before = measure_psnr(original, task)
    after = measure_psnr(watermarked, task)
    return Fidelity(psnr_before_db=before, psnr_after_db=after, psnr_change_db=after - before,
                    photos=tuple(task.eval_photos))


# Key files --------------------------------------------------------------------


def save_key(key: WatermarkKey, path: str | Path) -> Path:
    """Write a key as a safetensors file (tensors, and the rest as JSON metadata), atomically."""
    header = {"method": key.method, "task": key.task, "scale": key.scale, "settings": key.settings,
              "threshold": key.threshold}
    data = save_tensors({name: tensor.contiguous() for name, tensor in key.tensors.items()},
                        metadata={_KEY_METADATA: json.dumps(header, sort_keys=True)})
    target = Path(path)
    atomic_write_bytes(target, data)
    return target


def load_key(path: str | Path) -> WatermarkKey:
    """Read a key written by :func:`save_key`.

    Raises:
        FingerprintFormatError: If the file is not a critprint watermark key.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__", {})
        header = json.loads(metadata[_KEY_METADATA])
        tensors = load_tensors(data)
        return WatermarkKey(method=header["method"], task=header["task"], scale=int(header["scale"]),
                            settings=header["settings"], threshold=float(header["threshold"]), tensors=tensors)
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as error:
        raise FingerprintFormatError(
            f"cannot read watermark key {source}: {type(error).__name__}: {error}; write it with save_key"
        ) from None
