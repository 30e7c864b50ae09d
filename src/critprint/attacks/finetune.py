"""Fine-tuning attack: continue training the model on its own task.

A thief who fine-tunes a stolen model on their own photos keeps its
restoration quality while moving every weight a little. The fine-tuning here
uses the zoo's training recipe (random patches with flips and quarter turns,
Gaussian noise or bicubic downscaling, Adam, L1 loss) on
``RestorationTask.train_photos``, seeded by ``RestorationTask.seed``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from critprint.attacks.quality import RestorationTask, TaskNetwork, degrade_batch
from critprint.errors import InvalidInputError
from critprint.zoo.photos import load_photo
from critprint.zoo.train import fold_reparameterized_convs, sample_patches

__all__ = ["finetune", "train_network", "export_state_dict", "check_learning_rate", "default_patch_size"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
"""Patches per optimiser step of the fine-tuning and distillation attacks."""

_NOISE_SEED_OFFSET = 1_000_003
"""Offset between the patch and the noise generator seeds, as in zoo.train."""

_LOG_INTERVAL_STEPS = 100


def check_learning_rate(learning_rate: float) -> float:
    """Return ``learning_rate`` if it is a finite number in (0, 1), else raise InvalidInputError."""
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and 0 < learning_rate < 1):
        raise InvalidInputError(
            f"invalid learning rate {learning_rate!r}: expected a number in (0, 1), e.g. 1e-4"
        )
    return float(learning_rate)


def default_patch_size(task: RestorationTask) -> int:
    """Return the ground-truth patch side: 48 for scale-1 tasks, 16 LR pixels (64 at x4) for SR."""
    return 48 if task.task != "sr" else 16 * task.scale


def export_state_dict(module: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the module's state dict with the keys, order and dtypes of ``reference``.

    Re-parameterised convolutions (SPAN's ``Conv3XC``) are folded first, so
    the stored inference kernels match the trained branches.

    Raises:
        InvalidInputError: If the module's keys differ from ``reference``'s,
            which happens when ``reference`` is not in spandrel's canonical
            form (read it with ``critprint.models.read_state_dict``).
    """
    fold_reparameterized_convs(module)
    module.eval()
    trained = module.state_dict()
    if set(trained) != set(reference):
        missing = sorted(set(reference) ^ set(trained))[:3]
        raise InvalidInputError(
            f"the state dict's keys differ from the network spandrel builds ({', '.join(missing)}, ...); "
            "read the model with critprint.models.read_state_dict before attacking it"
        )
    return {name: trained[name].detach().clone().to(reference[name].dtype) for name in reference}


def train_network(
    network: TaskNetwork,
    task: RestorationTask,
    *,
    steps: int,
    learning_rate: float,
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    patch_size: int | None = None,
    label: str = "finetune",
) -> float:
    """Train ``network`` in place with Adam and an L1 loss; return the training seconds.

    Each step crops ``batch_size`` clean patches from ``task.train_photos``,
    degrades them for the task, and moves the output towards the target.
    Patches and noise come from generators seeded by ``task.seed``, and any
    other random draw (dropout) from the global generator seeded the same way
    inside a forked random state, so a run is deterministic for a given torch
    build and thread count. The network is in train mode while training and
    in eval mode, with re-parameterised convolutions folded, afterwards.

    Args:
        network: The network to train.
        task: The task, photos and seed.
        steps: Optimiser steps, at least 1.
        learning_rate: Adam's learning rate.
        target: ``(network input, clean patch) -> target output``; the clean
            patch when None (fine-tuning). Distillation passes the source
            model's output.
        after_step: Called with the module after every optimiser step, e.g.
            to reapply a pruning mask.
        batch_size: Patches per step.
        patch_size: Ground-truth patch side, a multiple of the scale;
            :func:`default_patch_size` when None.
        label: Name shown in the log.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"invalid steps {steps!r}: expected an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"invalid batch_size {batch_size!r}: expected an integer >= 1")
    patch_size = default_patch_size(task) if patch_size is None else patch_size
    if not isinstance(patch_size, int) or patch_size < 4 * task.scale or patch_size % task.scale:
        raise InvalidInputError(
            f"invalid patch_size {patch_size!r}: expected a multiple of the scale {task.scale}, at least {4 * task.scale}"
        )
    check_learning_rate(learning_rate)

    photos = [load_photo(name) for name in task.train_photos]
    too_small = [name for name, photo in zip(task.train_photos, photos) if min(photo.shape[1:]) < patch_size]
    if too_small:
        raise InvalidInputError(f"training photo {too_small[0]!r} is smaller than the patch size {patch_size}; pick a larger photo")
    patch_generator = torch.Generator().manual_seed(task.seed)
    noise_generator = torch.Generator().manual_seed(task.seed + _NOISE_SEED_OFFSET)

    module = network.module
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)

    start = time.perf_counter()
    running_loss = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        module.train()
        try:
            for step in range(1, steps + 1):
                clean = sample_patches(photos, batch_size, patch_size, patch_generator)
                network_input = degrade_batch(task, clean, noise_generator)
                expected = clean if target is None else target(network_input, clean)
                loss = F.l1_loss(network(network_input), expected)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step(module)
                running_loss += loss.item()
                if step % _LOG_INTERVAL_STEPS == 0 or step == steps:
                    interval = (step - 1) % _LOG_INTERVAL_STEPS + 1
                    logger.info(
                        "%s step %d/%d: mean L1 loss %.5f, %.1f s elapsed",
                        label, step, steps, running_loss / interval, time.perf_counter() - start,
                    )
                    running_loss = 0.0
        finally:
            fold_reparameterized_convs(module)
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    return time.perf_counter() - start


def finetune(
    state_dict: dict[str, torch.Tensor],
    task: RestorationTask,
    learning_rate: float = 1e-4,
    *,
    steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    patch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune the model on its own task and return the new state dict.

    Args:
        state_dict: The source model's parameters, as read by
            ``critprint.models.read_state_dict``; not modified.
        task: The task, training photos and seed.
        learning_rate: Adam's learning rate, in (0, 1).
        steps: Optimiser steps; ``task.finetune_steps`` when None.
        batch_size: Patches per step.
        patch_size: Ground-truth patch side; 48 for scale-1 tasks, 16 LR pixels
            for SR when None.

    Returns:
        A state dict with the same keys, order, shapes and dtypes.

    Raises:
        InvalidInputError: If an argument is out of range.
        ModelLoadError: If spandrel detects no image-to-image architecture.
        IncompatibleModelError: If the model does not fit ``task``.
    """
    check_learning_rate(learning_rate)
    steps = task.finetune_steps if steps is None else steps
    network = TaskNetwork(state_dict, task)
    train_network(
        network, task, steps=steps, learning_rate=learning_rate,
        batch_size=batch_size, patch_size=patch_size, label="finetune",
    )
    return export_state_dict(network.module, state_dict)
