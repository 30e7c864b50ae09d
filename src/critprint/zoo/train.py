"""Train the bundled zoo models and write their weights, manifest and cards.

Run ``python -m critprint.zoo.train --all`` to rebuild every model with the
settings recorded in ``MODEL_SPECS``, which are the settings that produced the
shipped files. ``--model NAME`` rebuilds one model, and ``--seed``/``--steps``
override its recorded values.

Every random draw (weight initialisation, patch positions, augmentation,
noise and rain layers) comes from generators seeded by the model's seed. Bit-exact
reproduction additionally needs the same torch version and thread count,
because floating-point reduction order differs between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import safetensors.torch
import spandrel
import torch
import torch.nn.functional as F
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.NAFNet import NAFNet
from spandrel.architectures.PLKSR import PLKSR
from spandrel.architectures.RCAN import RCAN
from spandrel.architectures.SAFMN import SAFMN
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SwinIR import SwinIR
from torch import nn

from critprint.degradations import blur_kernel, degrade_deblur, degrade_derain, degrade_jpeg, degrade_lowlight, rain_layer
from critprint.protocol import TASK_DEFAULTS, Protocol, get_protocol
from critprint.zoo.photos import HELDOUT_PHOTOS, crop_to_multiple, load_photo

logger = logging.getLogger(__name__)

Task = Literal["denoise", "sr", "deblur", "lowlight", "derain", "jpeg"]

PROTOCOL_TASKS: Final[tuple[str, ...]] = ("deblur", "lowlight", "derain", "jpeg")
"""Tasks whose training degradation is critprint's own, with the ``quick`` preset's parameters."""

_TASK_LABELS: Final[dict[str, str]] = {
    "deblur": "Deblurring model",
    "lowlight": "Low-light enhancement model",
    "derain": "Deraining model",
    "jpeg": "JPEG artefact-removal model",
}

ZOO_DIR: Final[Path] = Path(__file__).resolve().parent
"""Folder that contains the shipped manifest, weights and cards."""

MANIFEST_NAME: Final[str] = "manifest.json"
MAX_WEIGHT_BYTES: Final[int] = 2 * 1024 * 1024
TRAIN_THREADS: Final[int] = 1
"""CPU threads used for the recorded training runs.

On the 2-CPU training machine, 2 threads slowed a SPAN step from 0.1 s to about
9 s whenever another process was busy, so the recorded runs use one thread.
"""

EVAL_NOISE_SEED: Final[int] = 0
"""Seed of the noise added to held-out photos when scoring denoisers."""

LOG_INTERVAL_STEPS: Final[int] = 100


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Recorded architecture and training settings of one zoo model."""

    name: str
    task: Task
    architecture: str
    """Architecture id that spandrel reports for the saved weights."""
    scale: int
    architecture_options: dict[str, Any]
    """Keyword arguments of the spandrel architecture class."""
    train_photos: tuple[str, ...]
    steps: int
    batch_size: int
    patch_size: int
    """Side of the square ground-truth patch in pixels (the HR patch for SR)."""
    learning_rate: float
    seed: int
    loss: Literal["l1", "mse"]
    train_noise_sigma: float | None = None
    """Standard deviation of the Gaussian noise on the [0, 1] scale (denoise only)."""
    group: str = "source"
    """``source`` for the evaluation's source models, otherwise the name of a
    hard-negative family: models of one architecture retrained on other photos
    or with other seeds, which a fingerprint must tell apart."""



_DENOISE_SIGMA: Final[float] = 25 / 255

_PHOTO_SUBSETS: Final[tuple[tuple[str, ...], ...]] = (
    ("astronaut", "rocket", "stereo_motorcycle"),
    ("hubble_deep_field", "immunohistochemistry", "retina"),
    ("astronaut", "immunohistochemistry", "retina"),
    ("rocket", "stereo_motorcycle", "hubble_deep_field"),
)
"""Training photo subsets of the hard-negative families; the first is the base's."""


def _family(base: ModelSpec, seeds: Sequence[int]) -> tuple[ModelSpec, ...]:
    """Return ``base`` and its retrained variants: other photo subsets, then other seeds."""
    variants = [base]
    for index, photos in enumerate(_PHOTO_SUBSETS[1:], start=2):
        variants.append(dataclasses.replace(base, name=f"{base.group}-photos{index}", train_photos=photos))
    for index, seed in enumerate(seeds, start=2):
        variants.append(dataclasses.replace(base, name=f"{base.group}-seed{index}", seed=seed))
    return tuple(variants)


_NEW_SPECS: Final[tuple[ModelSpec, ...]] = (
    ModelSpec(
        name="swinir-dn",
        task="denoise",
        architecture="SwinIR",
        scale=1,
        architecture_options={
            "upscale": 1, "in_chans": 3, "img_size": 48, "window_size": 8, "embed_dim": 24,
            "depths": [2, 2], "num_heads": [2, 2], "mlp_ratio": 2.0, "upsampler": "",
            "resi_connection": "1conv",
        },
        train_photos=("rocket", "stereo_motorcycle", "retina"),
        steps=800, batch_size=8, patch_size=48, learning_rate=5e-4, seed=5, loss="mse",
        train_noise_sigma=_DENOISE_SIGMA,
    ),
    ModelSpec(
        name="safmn-dn",
        task="denoise",
        architecture="SAFMN",
        scale=1,
        architecture_options={"dim": 16, "n_blocks": 4, "upscaling_factor": 1},
        train_photos=("astronaut", "hubble_deep_field", "immunohistochemistry"),
        steps=1500, batch_size=8, patch_size=48, learning_rate=1e-3, seed=6, loss="mse",
        train_noise_sigma=_DENOISE_SIGMA,
    ),
    ModelSpec(
        name="plksr-dn",
        task="denoise",
        architecture="PLKSR",
        scale=1,
        architecture_options={"dim": 16, "n_blocks": 4, "upscaling_factor": 1, "kernel_size": 9},
        train_photos=("astronaut", "rocket", "retina"),
        steps=1200, batch_size=8, patch_size=48, learning_rate=1e-3, seed=7, loss="mse",
        train_noise_sigma=_DENOISE_SIGMA,
    ),
    ModelSpec(
        name="compact-dn",
        task="denoise",
        architecture="Compact",
        scale=1,
        architecture_options={
            "num_in_ch": 3, "num_out_ch": 3, "num_feat": 32, "num_conv": 8, "upscale": 1,
        },
        train_photos=("stereo_motorcycle", "immunohistochemistry", "retina"),
        steps=1200, batch_size=8, patch_size=48, learning_rate=1e-3, seed=8, loss="mse",
        train_noise_sigma=_DENOISE_SIGMA,
    ),
    ModelSpec(
        name="esrgan-x4",
        task="sr",
        architecture="ESRGAN",
        scale=4,
        architecture_options={"num_filters": 16, "num_blocks": 1, "scale": 4},
        train_photos=("astronaut", "rocket", "immunohistochemistry"),
        steps=5000, batch_size=8, patch_size=64, learning_rate=1e-3, seed=9, loss="l1",
    ),
    ModelSpec(
        name="swinir-x4",
        task="sr",
        architecture="SwinIR",
        scale=4,
        architecture_options={
            "upscale": 4, "in_chans": 3, "img_size": 16, "window_size": 8, "embed_dim": 24,
            "depths": [2, 2], "num_heads": [2, 2], "mlp_ratio": 2.0,
            "upsampler": "pixelshuffledirect", "resi_connection": "1conv",
        },
        train_photos=("stereo_motorcycle", "hubble_deep_field", "retina"),
        steps=5000, batch_size=8, patch_size=64, learning_rate=1e-3, seed=10, loss="l1",
    ),
    ModelSpec(
        name="rcan-x4",
        task="sr",
        architecture="RCAN",
        scale=4,
        architecture_options={"scale": 4, "n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4},
        train_photos=("astronaut", "stereo_motorcycle", "retina"),
        steps=3000, batch_size=8, patch_size=64, learning_rate=1e-3, seed=11, loss="l1",
    ),
    ModelSpec(
        name="safmn-x4",
        task="sr",
        architecture="SAFMN",
        scale=4,
        architecture_options={"dim": 16, "n_blocks": 4, "upscaling_factor": 4},
        train_photos=("rocket", "immunohistochemistry", "retina"),
        steps=8000, batch_size=8, patch_size=64, learning_rate=2e-3, seed=12, loss="l1",
    ),
    *_family(
        ModelSpec(
            name="dncnn-h",
            task="denoise",
            architecture="DnCNN",
            scale=1,
            architecture_options={"in_nc": 3, "out_nc": 3, "nc": 32, "nb": 8, "act_mode": "R"},
            train_photos=_PHOTO_SUBSETS[0],
            steps=600, batch_size=8, patch_size=48, learning_rate=1e-3, seed=21, loss="mse",
            train_noise_sigma=_DENOISE_SIGMA,
            group="dncnn-h",
        ),
        seeds=(22, 23, 24),
    ),
    *_family(
        ModelSpec(
            name="compact-x4-h",
            task="sr",
            architecture="Compact",
            scale=4,
            architecture_options={
                "num_in_ch": 3, "num_out_ch": 3, "num_feat": 32, "num_conv": 8, "upscale": 4,
            },
            train_photos=_PHOTO_SUBSETS[0],
            steps=2000, batch_size=16, patch_size=64, learning_rate=1e-3, seed=31, loss="l1",
            group="compact-x4-h",
        ),
        seeds=(32, 33, 34),
    ),
)

_TASK_PHOTO_SUBSETS: Final[tuple[tuple[str, ...], ...]] = (
    ("astronaut", "rocket", "retina"),
    ("stereo_motorcycle", "immunohistochemistry", "hubble_deep_field"),
    ("astronaut", "stereo_motorcycle", "immunohistochemistry"),
    ("rocket", "hubble_deep_field", "retina"),
)
"""Training photo subsets of the other-task models; model i of a task takes subset (task index + i) mod 4."""


def _task_sources(task: str, task_index: int, steps: tuple[int, int, int]) -> tuple[ModelSpec, ...]:
    """Return the three source models of a task in :data:`PROTOCOL_TASKS`: DnCNN, Compact and PLKSR.

    They are named ``ARCH-TASK`` and trained with L1 loss, batch 8, 48 px
    patches and ``steps`` (one count per architecture).
    """
    architectures: tuple[tuple[str, str, dict[str, Any], float], ...] = (
        ("dncnn", "DnCNN", {"in_nc": 3, "out_nc": 3, "nc": 32, "nb": 8, "act_mode": "R"}, 1e-3),
        ("compact", "Compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 32, "num_conv": 8, "upscale": 1}, 1e-3),
        ("plksr", "PLKSR", {"dim": 16, "n_blocks": 4, "upscaling_factor": 1, "kernel_size": 9}, 1e-3),
    )
    return tuple(
        ModelSpec(
            name=f"{prefix}-{task}",
            task=task,  # type: ignore[arg-type]
            architecture=architecture,
            scale=1,
            architecture_options=options,
            train_photos=_TASK_PHOTO_SUBSETS[(task_index + index) % len(_TASK_PHOTO_SUBSETS)],
            steps=steps[index], batch_size=8, patch_size=48, learning_rate=learning_rate,
            seed=41 + 3 * task_index + index, loss="l1",
        )
        for index, (prefix, architecture, options, learning_rate) in enumerate(architectures)
    )


_TASK_SPECS: Final[tuple[ModelSpec, ...]] = (
    *_task_sources("deblur", 0, (1200, 900, 900)),
    *_task_sources("lowlight", 1, (1200, 900, 900)),
    *_task_sources("derain", 2, (1200, 900, 900)),
    *_task_sources("jpeg", 3, (2400, 900, 900)),
)
"""Three source models per task in :data:`PROTOCOL_TASKS`, each trained on critprint's degradation."""

MODEL_SPECS: Final[dict[str, ModelSpec]] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="dncnn",
            task="denoise",
            architecture="DnCNN",
            scale=1,
            architecture_options={
                "in_nc": 3,
                "out_nc": 3,
                "nc": 32,
                "nb": 10,
                "act_mode": "R",
            },
            train_photos=("astronaut", "rocket", "stereo_motorcycle"),
            steps=1000,
            batch_size=16,
            patch_size=48,
            learning_rate=1e-3,
            seed=1,
            loss="mse",
            train_noise_sigma=25 / 255,
        ),
        ModelSpec(
            name="nafnet",
            task="denoise",
            architecture="NAFNet",
            scale=1,
            architecture_options={
                "img_channel": 3,
                "width": 16,
                "middle_blk_num": 1,
                "enc_blk_nums": [1, 1, 1],
                "dec_blk_nums": [1, 1, 1],
            },
            train_photos=("astronaut", "stereo_motorcycle", "immunohistochemistry"),
            steps=1500,
            batch_size=16,
            patch_size=48,
            learning_rate=1e-3,
            seed=2,
            loss="mse",
            train_noise_sigma=25 / 255,
        ),
        ModelSpec(
            name="compact-x4",
            task="sr",
            architecture="Compact",
            scale=4,
            architecture_options={
                "num_in_ch": 3,
                "num_out_ch": 3,
                "num_feat": 32,
                "num_conv": 8,
                "upscale": 4,
            },
            train_photos=("rocket", "stereo_motorcycle", "retina"),
            steps=6000,
            batch_size=16,
            patch_size=64,
            learning_rate=1e-3,
            seed=3,
            loss="l1",
        ),
        ModelSpec(
            name="span-x4",
            task="sr",
            architecture="SPAN",
            scale=4,
            architecture_options={
                "num_in_ch": 3,
                "num_out_ch": 3,
                "feature_channels": 16,
                "upscale": 4,
                "norm": False,
            },
            train_photos=("astronaut", "rocket", "stereo_motorcycle", "immunohistochemistry"),
            steps=4000,
            batch_size=8,
            patch_size=64,
            learning_rate=2e-3,
            seed=4,
            loss="l1",
        ),
        *_NEW_SPECS,
        *_TASK_SPECS,
    )
}

_ARCHITECTURE_CLASSES: Final[dict[str, Callable[..., nn.Module]]] = {
    "DnCNN": DnCNN,
    "NAFNet": NAFNet,
    "Compact": Compact,
    "SPAN": SPAN,
    "SwinIR": SwinIR,
    "SAFMN": SAFMN,
    "PLKSR": PLKSR,
    "ESRGAN": ESRGAN,
    "RCAN": RCAN,
}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run, as recorded in the manifest."""

    spec: ModelSpec
    model: nn.Module
    train_seconds: float
    psnr_degraded_db: float
    psnr_restored_db: float
    psnr_per_photo: dict[str, tuple[float, float]]
    """Held-out photo name to (degraded, restored) PSNR in dB."""


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Create the untrained network, with initial weights drawn from ``seed``."""
    architecture_class = _ARCHITECTURE_CLASSES[spec.architecture]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return architecture_class(**spec.architecture_options)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Compute the PSNR in dB of two same-shape tensors on the [0, 1] scale."""
    mse = F.mse_loss(prediction.double(), target.double()).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)


def downscale_bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Make the LR input of SR by antialiased bicubic downscaling, clamped to [0, 1].

    ``hr`` is (B, 3, H, W) in [0, 1] with H and W divisible by ``scale``. The
    result is (B, 3, H / scale, W / scale).
    """
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
    return lr.clamp(0.0, 1.0)


def upscale_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Upscale (B, 3, h, w) to (B, 3, h * scale, w * scale) with bicubic, clamped to [0, 1]."""
    hr = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return hr.clamp(0.0, 1.0)


def add_gaussian_noise(
    clean: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, sigma^2) noise to ``clean`` without clipping the result."""
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return clean + sigma * noise


def task_protocol(task: str) -> Protocol:
    """Return the ``quick`` protocol of a task in :data:`PROTOCOL_TASKS`: its degradation's parameters."""
    if task not in PROTOCOL_TASKS:
        raise ValueError(f"invalid task {task!r}: expected one of {', '.join(PROTOCOL_TASKS)}")
    return get_protocol("quick", task)  # type: ignore[arg-type]


def degradation_settings(task: str) -> dict[str, Any]:
    """Return the protocol fields that set a task's degradation, as recorded in the manifest."""
    protocol = task_protocol(task)
    return {name: getattr(protocol, name) for name in TASK_DEFAULTS[task]}


def degrade_task(task: str, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Degrade a (B, 3, H, W) batch in [0, 1] with critprint's degradation of ``task``.

    The parameters are those of ``get_protocol("quick", task)``, so a model
    learns to undo the degradation its fingerprint is extracted with. The
    random parts are drawn per call from ``generator``: fresh Gaussian noise
    for ``deblur`` (sigma ``noise_sigma``), and for ``derain`` one rain layer
    per image, made by :func:`critprint.degradations.rain_layer` from a seed
    drawn here. ``lowlight`` (per-image Norm(X^g)) and ``jpeg`` (the
    differentiable JPEG of :func:`critprint.degradations.degrade_jpeg`, 4:4:4,
    cubic rounding) have no random part. Nothing is clamped, as in the
    degradations themselves. The result has the input's shape.
    """
    protocol = task_protocol(task)
    with torch.no_grad():
        if task == "deblur":
            noise = None
            if protocol.noise_sigma > 0:
                noise = protocol.noise_sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
            return degrade_deblur(clean, blur_kernel(protocol), noise)
        if task == "lowlight":
            return degrade_lowlight(clean, protocol.lowlight_gamma)
        if task == "derain":
            height, width = clean.shape[-2:]
            seeds = torch.randint(2**31 - 1, (clean.shape[0],), generator=generator)
            layers = torch.cat(
                [rain_layer(protocol.replace(seed=int(seed)), height, width) for seed in seeds]
            )
            return degrade_derain(clean, layers)
        return degrade_jpeg(clean, protocol.jpeg_quality)


def degrade(spec: ModelSpec, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make the network input for a (B, 3, H, W) ground-truth batch in [0, 1].

    Denoisers get noisy images of the same size. SR models get the bicubic
    downscaled image of size (B, 3, H / scale, W / scale). The other tasks get
    :func:`degrade_task`.
    """
    if spec.task == "denoise":
        if spec.train_noise_sigma is None:
            raise ValueError(f"Denoiser {spec.name!r} has no train_noise_sigma")
        return add_gaussian_noise(clean, spec.train_noise_sigma, generator)
    if spec.task in PROTOCOL_TASKS:
        return degrade_task(spec.task, clean, generator)
    return downscale_bicubic(clean, spec.scale)


def sample_patches(
    photos: Sequence[torch.Tensor],
    batch_size: int,
    patch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Crop a batch of random square patches with random flips and 90-degree turns.

    ``photos`` are (3, H, W) tensors at least ``patch_size`` on each side. The
    result is (batch_size, 3, patch_size, patch_size).
    """
    patches = []
    for _ in range(batch_size):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        top = int(torch.randint(photo.shape[1] - patch_size + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[2] - patch_size + 1, (1,), generator=generator))
        patch = photo[:, top : top + patch_size, left : left + patch_size]

        quarter_turns = int(torch.randint(4, (1,), generator=generator))
        patch = torch.rot90(patch, quarter_turns, dims=(1, 2))
        if int(torch.randint(2, (1,), generator=generator)) == 1:
            patch = patch.flip(2)
        patches.append(patch)
    return torch.stack(patches)


def _loss_function(spec: ModelSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if spec.loss == "l1":
        return F.l1_loss
    return F.mse_loss


def fold_reparameterized_convs(model: nn.Module) -> None:
    """Write the inference kernels of re-parameterised convolutions.

    SPAN's ``Conv3XC`` trains a multi-branch block but stores a folded 3x3
    ``eval_conv`` in the state dict. ``eval_conv`` is only refreshed by an
    eval-mode forward pass, so this folds it explicitly before saving.
    """
    for module in model.modules():
        update_params = getattr(module, "update_params", None)
        if callable(update_params):
            update_params()


def train_model(spec: ModelSpec, seed: int, steps: int) -> tuple[nn.Module, float]:
    """Train a fresh network from ``seed`` for ``steps`` Adam steps.

    The learning rate follows a cosine decay from ``spec.learning_rate`` to 1%
    of it. Returns the model in eval mode and the training time in seconds.
    """
    model = build_model(spec, seed)
    model.train()
    photos = [load_photo(name) for name in spec.train_photos]
    patch_generator = torch.Generator().manual_seed(seed)
    degradation_generator = torch.Generator().manual_seed(seed + 1_000_003)

    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps, eta_min=spec.learning_rate * 0.01
    )
    loss_function = _loss_function(spec)

    start = time.perf_counter()
    running_loss = 0.0
    for step in range(1, steps + 1):
        target = sample_patches(photos, spec.batch_size, spec.patch_size, patch_generator)
        network_input = degrade(spec, target, degradation_generator)

        loss = loss_function(model(network_input), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        running_loss += loss.item()
        if step % LOG_INTERVAL_STEPS == 0 or step == steps:
            interval = LOG_INTERVAL_STEPS if step % LOG_INTERVAL_STEPS == 0 else step % LOG_INTERVAL_STEPS
            logger.info(
                "%s step %d/%d: mean %s loss %.5f, %.1f s elapsed",
                spec.name,
                step,
                steps,
                spec.loss,
                running_loss / interval,
                time.perf_counter() - start,
            )
            running_loss = 0.0
    train_seconds = time.perf_counter() - start

    fold_reparameterized_convs(model)
    model.eval()
    return model, train_seconds


def degrade_heldout(
    spec: ModelSpec, clean: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make (network input, degraded baseline at target size) for one held-out photo.

    ``clean`` is (1, 3, H, W). For SR the baseline is the LR input upscaled
    back with bicubic; for the other tasks both are the degraded image, not
    clipped.
    """
    network_input = degrade(spec, clean, generator)
    if spec.task != "sr":
        return network_input, network_input
    return network_input, upscale_bicubic(network_input, spec.scale)


@torch.inference_mode()
def evaluate_heldout(
    spec: ModelSpec, model: nn.Module
) -> dict[str, tuple[float, float]]:
    """Score ``model`` on each full held-out photo.

    Returns photo name to (degraded PSNR, restored PSNR) in dB. The restored
    output is clamped to [0, 1]. Photos are cropped to a multiple of the scale
    and the random parts of the degradation (noise, rain) are drawn from
    ``EVAL_NOISE_SEED``.
    """
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    scores: dict[str, tuple[float, float]] = {}
    for name in HELDOUT_PHOTOS:
        clean = crop_to_multiple(load_photo(name), spec.scale).unsqueeze(0)
        network_input, baseline = degrade_heldout(spec, clean, generator)
        restored = model(network_input).clamp(0.0, 1.0)
        scores[name] = (psnr(baseline, clean), psnr(restored, clean))
    return scores


def save_weights(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Save the state dict as safetensors and check that spandrel detects it.

    Raises ``RuntimeError`` if the file exceeds ``MAX_WEIGHT_BYTES`` or
    spandrel reports another architecture, scale or channel count.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    safetensors.torch.save_file(state_dict, str(path), metadata={"format": "pt"})
    # safetensors 0.8 creates the file owner-only (0600), but it ships as package data.
    path.chmod(0o644)

    size = path.stat().st_size
    if size >= MAX_WEIGHT_BYTES:
        raise RuntimeError(f"{path} is {size} bytes, over the {MAX_WEIGHT_BYTES}-byte limit")

    descriptor = spandrel.ModelLoader().load_from_file(path)
    detected = (
        descriptor.architecture.id,
        descriptor.scale,
        descriptor.input_channels,
        descriptor.output_channels,
    )
    expected = (spec.architecture, spec.scale, 3, 3)
    if detected != expected:
        raise RuntimeError(
            f"spandrel loads {path} as (architecture, scale, in, out) {detected}, "
            f"expected {expected}"
        )


def count_parameters(model: nn.Module) -> int:
    """Count the entries of the state dict, which is what the weight file stores."""
    return sum(tensor.numel() for tensor in model.state_dict().values())


def manifest_entry(result: TrainResult, seed: int, steps: int) -> dict[str, Any]:
    """Build the manifest record of one trained model."""
    spec = result.spec
    entry: dict[str, Any] = {
        "name": spec.name,
        "task": spec.task,
        "architecture": spec.architecture,
        "scale": spec.scale,
        "channels": 3,
        "file": f"weights/{spec.name}.safetensors",
        "parameters": count_parameters(result.model),
        "train_photos": list(spec.train_photos),
        "heldout_photos": list(HELDOUT_PHOTOS),
        "steps": steps,
        "batch_size": spec.batch_size,
        "patch_size": spec.patch_size,
        "learning_rate": spec.learning_rate,
        "seed": seed,
        "loss": spec.loss,
        "group": spec.group,
    }
    if spec.train_noise_sigma is not None:
        entry["train_noise_sigma"] = spec.train_noise_sigma
    if spec.task in PROTOCOL_TASKS:
        entry["degradation"] = {"protocol": "quick", **degradation_settings(spec.task)}
    entry.update(
        {
            "psnr_degraded_db": round(result.psnr_degraded_db, 2),
            "psnr_restored_db": round(result.psnr_restored_db, 2),
            "architecture_options": spec.architecture_options,
            "train_seconds": round(result.train_seconds, 1),
        }
    )
    return entry


def update_manifest(out_dir: Path, entry: dict[str, Any]) -> None:
    """Insert or replace ``entry`` in ``out_dir/manifest.json``, ordered as ``MODEL_SPECS``."""
    manifest_path = out_dir / MANIFEST_NAME
    entries: list[dict[str, Any]] = []
    if manifest_path.exists():
        entries = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = [existing for existing in entries if existing["name"] != entry["name"]]
    entries.append(entry)

    order = list(MODEL_SPECS)
    entries.sort(key=lambda item: order.index(item["name"]) if item["name"] in order else len(order))
    manifest_path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def describe_machine() -> str:
    """Describe the CPU, OS and library versions of the training machine."""
    processor = platform.processor() or platform.machine()
    return (
        f"{processor}, {os.cpu_count()} logical CPUs, torch threads: {torch.get_num_threads()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, spandrel {spandrel.__version__}"
    )


def reproduce_command(spec: ModelSpec, seed: int, steps: int) -> str:
    """Return the shell command that retrains this model into the zoo folder."""
    return f"python -m critprint.zoo.train --model {spec.name} --seed {seed} --steps {steps}"


def task_summary(task: str, scale: int = 1, noise_sigma: float | None = None) -> str:
    """Describe a task and its degradation in a few words, for the zoo table."""
    if task == "denoise":
        return f"denoise, sigma {(noise_sigma if noise_sigma is not None else _DENOISE_SIGMA) * 255:g}/255"
    if task == "sr":
        return f"x{scale} SR"
    settings = degradation_settings(task)
    if task == "deblur":
        return (
            f"deblur, Gaussian sigma {settings['blur_sigma']:g} px, noise {settings['noise_sigma']:g}"
        )
    if task == "lowlight":
        return f"lowlight, gamma {settings['lowlight_gamma']:g}"
    if task == "derain":
        return f"derain, density {settings['rain_density']:g}, intensity {settings['rain_intensity']:g}"
    return f"jpeg, quality {settings['jpeg_quality']}"


def _degradation_text(spec: ModelSpec) -> str:
    if spec.task == "denoise":
        sigma = spec.train_noise_sigma or 0.0
        return (
            f"additive Gaussian noise, sigma {sigma * 255:g}/255 = {sigma:.4f} on the "
            "[0, 1] scale, not clipped"
        )
    if spec.task == "sr":
        return (
            f"x{spec.scale} downscaling with `torch.nn.functional.interpolate(hr, "
            f'scale_factor=1/{spec.scale}, mode="bicubic", antialias=True)`, clamped to [0, 1]'
        )
    settings = degradation_settings(spec.task)
    if spec.task == "deblur":
        return (
            f"critprint's `degrade_deblur`: Gaussian blur, sigma {settings['blur_sigma']:g} px on a kernel of "
            f"{settings['blur_size']} px, reflect padding, then fresh Gaussian noise of sigma "
            f"{settings['noise_sigma']:g} per batch, not clipped"
        )
    if spec.task == "lowlight":
        return (
            f"critprint's `degrade_lowlight`: Norm(X^{settings['lowlight_gamma']:g}), each image min-max "
            "normalised to [0, 1]"
        )
    if spec.task == "derain":
        return (
            f"critprint's `degrade_derain`: rain streaks from {settings['rain_density']:g} of the pixels, "
            f"{settings['rain_length']} px long at {settings['rain_angle']:g} degrees, intensity "
            f"{settings['rain_intensity']:g}, added and not clipped; a new rain layer per image, from a seed "
            "drawn by the training generator"
        )
    return (
        f"critprint's `degrade_jpeg`: differentiable JPEG at quality {settings['jpeg_quality']} "
        "(8 x 8 DCT, IJG tables, 4:4:4, cubic rounding), not clipped; the fingerprint's own JPEG, "
        "not Pillow's"
    )


def _evaluation_text(spec: ModelSpec) -> str:
    if spec.task == "sr":
        return (
            f"PSNR in dB on the full held-out photos (cropped to a multiple of {spec.scale}),\n"
            "comparing bicubic upscaling of the LR input with the model output clamped to [0, 1]."
        )
    random_parts = {"denoise": "noise", "deblur": "noise", "derain": "rain layers"}.get(spec.task)
    seed_text = (
        f" The evaluation {random_parts} {'are' if random_parts.endswith('s') else 'is'} drawn with seed "
        f"{EVAL_NOISE_SEED}."
        if random_parts
        else ""
    )
    return (
        "PSNR in dB on the full held-out photos, comparing the degraded input (not clipped) with the\n"
        f"model output clamped to [0, 1].{seed_text}"
    )


def _model_kind(spec: ModelSpec) -> str:
    if spec.task == "denoise":
        return "Denoiser"
    if spec.task == "sr":
        return f"x{spec.scale} super-resolution model"
    return _TASK_LABELS[spec.task]


def render_card(result: TrainResult, entry: dict[str, Any], weight_bytes: int) -> str:
    """Render the Markdown model card of one trained model."""
    spec = result.spec
    options = json.dumps(spec.architecture_options)
    per_photo_rows = "\n".join(
        f"| {name} | {degraded:.2f} | {restored:.2f} | {restored - degraded:+.2f} |"
        for name, (degraded, restored) in result.psnr_per_photo.items()
    )
    gain = entry["psnr_restored_db"] - entry["psnr_degraded_db"]
    return f"""# {spec.name}

{_model_kind(spec)} trained from scratch for the critprint model zoo.

| Field | Value |
| --- | --- |
| Task | {spec.task} |
| Architecture (spandrel id) | `{spec.architecture}` |
| Architecture options | `{options}` |
| Scale | {spec.scale} |
| Channels in/out | 3 / 3 |
| Parameters | {entry["parameters"]:,} |
| Weight file | `{entry["file"]}` ({weight_bytes:,} bytes) |
| Training photos | {", ".join(spec.train_photos)} |
| Held-out photos | {", ".join(HELDOUT_PHOTOS)} |
| Degradation | {_degradation_text(spec)} |
| Steps | {entry["steps"]} |
| Batch size | {spec.batch_size} |
| Patch size | {spec.patch_size}x{spec.patch_size} (ground truth) |
| Optimiser | Adam, learning rate {spec.learning_rate:g}, cosine decay to 1% |
| Loss | {spec.loss.upper()} |
| Seed | {entry["seed"]} |
| Training time | {entry["train_seconds"]} s |

## Held-out PSNR

{_evaluation_text(spec)}

| Photo | Degraded | Restored | Gain |
| --- | --- | --- | --- |
{per_photo_rows}
| **Mean** | **{entry["psnr_degraded_db"]:.2f}** | **{entry["psnr_restored_db"]:.2f}** | **{gain:+.2f}** |

## Reproduce

```sh
{reproduce_command(spec, entry["seed"], entry["steps"])}
```

Trained on {datetime.datetime.now(datetime.UTC).date().isoformat()} on: {describe_machine()}.
Bit-exact weights need the same torch version and thread count.
"""


def run_training(name: str, seed: int | None, steps: int | None, out_dir: Path) -> TrainResult:
    """Train, score and save one model, then update the manifest and card in ``out_dir``.

    ``seed`` and ``steps`` default to the recorded values of the model.
    """
    spec = MODEL_SPECS[name]
    seed = spec.seed if seed is None else seed
    steps = spec.steps if steps is None else steps
    logger.info("Training %s (seed %d, %d steps)", name, seed, steps)

    model, train_seconds = train_model(spec, seed, steps)
    scores = evaluate_heldout(spec, model)
    result = TrainResult(
        spec=spec,
        model=model,
        train_seconds=train_seconds,
        psnr_degraded_db=sum(degraded for degraded, _ in scores.values()) / len(scores),
        psnr_restored_db=sum(restored for _, restored in scores.values()) / len(scores),
        psnr_per_photo=scores,
    )

    weight_path = out_dir / "weights" / f"{name}.safetensors"
    save_weights(model, spec, weight_path)
    entry = manifest_entry(result, seed, steps)
    update_manifest(out_dir, entry)

    card_path = out_dir / "cards" / f"{name}.md"
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(
        render_card(result, entry, weight_path.stat().st_size), encoding="utf-8"
    )
    return result


def render_zoo_table(entries: Sequence[dict[str, Any]], zoo_dir: Path = ZOO_DIR) -> str:
    """Render the manifest as the Markdown table of docs/zoo.md, one row per model."""
    rows = [
        "| Name | Group | Task | spandrel architecture | Parameters | File size | Training photos | Seed "
        "| Steps x batch | Held-out PSNR before -> after | Training time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in entries:
        task = task_summary(entry["task"], entry["scale"], entry.get("train_noise_sigma"))
        size = (zoo_dir / entry["file"]).stat().st_size
        rows.append(
            f"| `{entry['name']}` | {entry.get('group', 'source')} | {task} | {entry['architecture']} "
            f"| {entry['parameters']:,} | {size:,} B | {', '.join(entry['train_photos'])} | {entry['seed']} "
            f"| {entry['steps']} x {entry['batch_size']} "
            f"| {entry['psnr_degraded_db']:.2f} -> {entry['psnr_restored_db']:.2f} dB | {entry['train_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``python -m critprint.zoo.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m critprint.zoo.train",
        description="Train the critprint zoo models on CPU and write weights, manifest and cards.",
    )

    selection = parser.add_mutually_exclusive_group(required=True)
    selection.add_argument("--model", choices=list(MODEL_SPECS), help="model to train")
    selection.add_argument(
        "--all", action="store_true", help="train every model with its recorded seed and steps"
    )
    selection.add_argument(
        "--table", action="store_true", help="print the manifest as the Markdown table of docs/zoo.md and exit"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the recorded seed)")
    parser.add_argument(
        "--steps", type=int, help="number of optimiser steps (default: the recorded steps)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ZOO_DIR,
        help="output folder for weights/, cards/ and manifest.json (default: the zoo folder)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=TRAIN_THREADS,
        help=f"torch CPU threads (default: {TRAIN_THREADS}, as in the recorded runs)",
    )

    args = parser.parse_args(argv)
    if args.all and (args.seed is not None or args.steps is not None):
        parser.error("--all uses the recorded seeds and steps; drop --seed and --steps")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Train the selected models and print one summary line per model."""
    args = parse_args(argv)
    if args.table:
        print(render_zoo_table(json.loads((args.out / MANIFEST_NAME).read_text(encoding="utf-8")), args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    names = list(MODEL_SPECS) if args.all else [args.model]
    for name in names:
        result = run_training(name, args.seed, args.steps, args.out)
        print(
            f"{name}: {count_parameters(result.model)} parameters, held-out PSNR "
            f"{result.psnr_degraded_db:.2f} -> {result.psnr_restored_db:.2f} dB, "
            f"{result.train_seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
