"""Global magnitude pruning and structured (channel) pruning."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from critprint.checks import check_range

if TYPE_CHECKING:
    from critprint.attacks.quality import RestorationTask

__all__ = ["prune_magnitude", "prune_channels", "channel_prune", "channel_masks", "apply_masks"]


def prune_magnitude(state_dict: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Set the ``fraction`` of smallest-magnitude weights to zero, globally.

    Only floating tensors whose name ends in ``weight`` and that have at least
    two dimensions (convolution and linear kernels) are pruned. Biases and
    normalisation parameters are kept. Ties at the cut-off magnitude are
    pruned too, so slightly more than the fraction may become zero.

    Args:
        state_dict: The model's parameters; not modified.
        fraction: Share of the prunable weights to zero, in (0, 1).

    Returns:
        A new state dict with the same keys, shapes and dtypes.

    Example:
        >>> pruned = prune_magnitude({"conv.weight": torch.tensor([[1.0, -3.0], [0.5, 2.0]])}, 0.5)
        >>> pruned["conv.weight"].tolist()
        [[0.0, -3.0], [0.0, 2.0]]
    """
    check_range("fraction", fraction, 0.0, 1.0)
    prunable = [
        name for name, tensor in state_dict.items()
        if name.endswith("weight") and tensor.is_floating_point() and tensor.ndim >= 2
    ]
    result = {name: tensor.detach().clone() for name, tensor in state_dict.items()}
    if not prunable:
        return result
    magnitudes = torch.cat([state_dict[name].detach().abs().flatten().to(torch.float64) for name in prunable])
    count = int(round(fraction * magnitudes.numel()))
    if count == 0:
        return result
    cutoff = torch.kthvalue(magnitudes, count).values
    for name in prunable:
        tensor = result[name]
        tensor[tensor.abs().to(torch.float64) <= cutoff] = 0
    return result


def channel_masks(
    state_dict: dict[str, torch.Tensor], fraction: float, keep: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Choose the output channels that structured pruning zeroes.

    In every floating 4-D tensor whose name ends in ``weight`` (a convolution
    kernel), except those named in ``keep``, the ``round(fraction * C_out)``
    output channels with the smallest L1 norm are chosen, ties broken by
    index. At most C_out - 1 channels are chosen, so no layer is removed
    entirely. The matching ``bias`` entries are chosen too.

    Args:
        state_dict: The model's parameters; not modified.
        fraction: Share of each layer's output channels to zero, in (0, 1).
        keep: Names of tensors never to prune, e.g. the output convolution.

    Returns:
        Tensor name to a boolean mask of its shape, True where the value is
        pruned. Tensors without pruned channels are absent.
    """
    check_range("fraction", fraction, 0.0, 1.0)
    kept = set(keep)
    masks: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name in kept or not name.endswith("weight") or tensor.ndim != 4 or not tensor.is_floating_point():
            continue
        channels = tensor.shape[0]
        count = min(int(round(fraction * channels)), channels - 1)
        if count <= 0:
            continue
        norms = tensor.detach().abs().to(torch.float64).flatten(1).sum(dim=1)
        pruned = torch.sort(norms, stable=True).indices[:count]
        mask = torch.zeros(tensor.shape, dtype=torch.bool)
        mask[pruned] = True
        masks[name] = mask
        bias_name = name.removesuffix("weight") + "bias"
        bias = state_dict.get(bias_name)
        if bias is not None and bias_name not in kept and bias.ndim == 1 and bias.shape[0] == channels:
            bias_mask = torch.zeros(bias.shape, dtype=torch.bool)
            bias_mask[pruned] = True
            masks[bias_name] = bias_mask
    return masks


def apply_masks(state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a copy of ``state_dict`` with the entries where ``masks`` is True set to zero."""
    result = {name: tensor.detach().clone() for name, tensor in state_dict.items()}
    for name, mask in masks.items():
        result[name][mask] = 0
    return result


def prune_channels(
    state_dict: dict[str, torch.Tensor],
    fraction: float,
    keep: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Zero the ``fraction`` of output channels with the smallest L1 norm in each convolution.

    This is the structured step of the ``channel-prune`` attack, without its
    fine-tuning (see :func:`channel_prune`). Shapes stay
    the same: pruned channels are zero, not removed.

    Args:
        state_dict: The model's parameters; not modified.
        fraction: Share of each layer's output channels to zero, in (0, 1).
        keep: Names of tensors never to prune; pass the output convolution's
            weight and bias (the ``channel-prune`` attack does).

    Returns:
        A new state dict with the same keys, shapes and dtypes.

    Example:
        >>> weight = torch.tensor([1.0, -3.0, 0.5, 2.0]).reshape(4, 1, 1, 1)
        >>> prune_channels({"conv.weight": weight}, 0.5)["conv.weight"].flatten().tolist()
        [0.0, -3.0, 0.0, 2.0]
    """
    return apply_masks(state_dict, channel_masks(state_dict, fraction, keep))


def channel_prune(
    state_dict: dict[str, torch.Tensor],
    task: RestorationTask,
    fraction: float = 0.1,
    *,
    steps: int | None = None,
    learning_rate: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """Prune output channels of every convolution but the output one, then fine-tune.

    The output convolution is the one that runs last (found by tracing a
    forward pass), since zeroing its channels would blank image channels.
    Fine-tuning follows :func:`critprint.attacks.finetune.finetune` and
    reapplies the mask after every optimiser step and to the result, so the
    pruned channels are exactly zero in the returned state dict.

    Args:
        state_dict: The source model's parameters; not modified.
        task: The task, training photos and seed.
        fraction: Share of each layer's output channels to zero, in (0, 1).
        steps: Fine-tuning steps; ``task.finetune_steps`` when None.
        learning_rate: Adam's learning rate of the fine-tuning.

    Returns:
        A state dict with the same keys, order, shapes and dtypes.

    Note:
        SPAN recomputes its inference kernels (``eval_conv``) from its
        training branches on every eval-mode call, so on SPAN the zeros of
        the stored ``eval_conv`` kernels do not survive loading the model.
    """
    from critprint.attacks.finetune import check_learning_rate, export_state_dict, train_network
    from critprint.attacks.quality import TaskNetwork, output_conv_names

    check_range("fraction", fraction, 0.0, 1.0)
    check_learning_rate(learning_rate)
    steps = task.finetune_steps if steps is None else steps
    network = TaskNetwork(state_dict, task)
    masks = channel_masks(state_dict, fraction, keep=output_conv_names(network))
    pruned = apply_masks(state_dict, masks)
    network.module.load_state_dict(pruned)
    live = network.module.state_dict()  # shares storage with the parameters

    def reapply(_module: nn.Module) -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                live[name].masked_fill_(mask, 0)

    train_network(
        network, task, steps=steps, learning_rate=learning_rate, after_step=reapply, label="channel-prune",
    )
    return apply_masks(export_state_dict(network.module, state_dict), masks)
