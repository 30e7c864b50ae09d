"""Global magnitude pruning."""

from __future__ import annotations

import torch

from critprint.checks import check_range

__all__ = ["prune_magnitude"]


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
