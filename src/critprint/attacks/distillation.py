"""Model extraction attack: train a fresh network to imitate the source.

A thief with query access, or one who wants to launder a stolen model, can
train a network of the same architecture from a new random initialisation to
reproduce the source's outputs. The student never copies a weight, so it is
the hardest case for a fingerprint. Its restoration quality depends on the
training budget, so it is reported as measured, without calibration.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from critprint.attacks.finetune import check_learning_rate, export_state_dict, train_network
from critprint.attacks.quality import RestorationTask, TaskNetwork

__all__ = ["distill", "reinitialize"]

logger = logging.getLogger(__name__)


def _fallback_init(name: str, parameter: nn.Parameter) -> None:
    """Initialise a parameter that no ``reset_parameters`` covers, by the usual convention."""
    leaf = name.rsplit(".", 1)[-1]
    if parameter.ndim >= 2 and leaf.endswith("weight"):
        nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
    elif leaf.endswith("weight"):
        nn.init.ones_(parameter)  # normalisation scales
    else:
        nn.init.zeros_(parameter)  # biases and residual scales (NAFNet's beta and gamma start at zero)


def reinitialize(module: nn.Module, seed: int) -> list[str]:
    """Give every parameter of ``module`` a fresh random value drawn from ``seed``, in place.

    Submodules with a ``reset_parameters`` method (convolutions, linear and
    normalisation layers, PReLU) are reset by it. Parameters owned by other
    modules, such as NAFNet's residual scales or custom layer norms, get the
    usual initial values: a Kaiming-uniform draw for kernels, ones for other
    weights, zeros for the rest. Buffers (fixed tables, running statistics
    not covered by a reset) are kept.

    Returns:
        The names of the parameters set by that fallback.
    """
    fallback: list[str] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module_name, child in module.named_modules():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for parameter_name, parameter in child.named_parameters(recurse=False):
                full_name = f"{module_name}.{parameter_name}" if module_name else parameter_name
                _fallback_init(full_name, parameter)
                fallback.append(full_name)
    if fallback:
        logger.debug("re-initialised %d parameters by convention: %s", len(fallback), ", ".join(fallback[:10]))
    return fallback


def distill(
    state_dict: dict[str, torch.Tensor],
    task: RestorationTask,
    learning_rate: float = 1e-3,
    *,
    steps: int | None = None,
) -> dict[str, torch.Tensor]:
    """Train a freshly initialised network of the same architecture to imitate the source.

    The student is built from the source's state dict by spandrel (so it has
    the same architecture and hyperparameters), re-initialised with
    :func:`reinitialize` from ``task.seed``, and trained with Adam for
    ``steps`` steps to match the source's output, clamped to [0, 1], under an
    L1 loss, on degraded patches of ``task.train_photos``.

    Args:
        state_dict: The source model's parameters; not modified.
        task: The task, training photos and seed.
        learning_rate: Adam's learning rate, in (0, 1).
        steps: Optimiser steps; ``task.distill_steps`` when None.

    Returns:
        The student's state dict, with the source's keys, order, shapes and
        dtypes.
    """
    check_learning_rate(learning_rate)
    steps = task.distill_steps if steps is None else steps
    teacher = TaskNetwork(state_dict, task)
    teacher.module.eval()
    for parameter in teacher.module.parameters():
        parameter.requires_grad_(False)
    student = TaskNetwork(state_dict, task)
    reinitialize(student.module, task.seed)

    def teacher_output(network_input: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher(network_input).clamp(0.0, 1.0)

    train_network(student, task, steps=steps, learning_rate=learning_rate, target=teacher_output, label="distill")
    return export_state_dict(student.module, state_dict)
