"""Weight quantization attack: store the kernels as symmetric integers.

Post-training quantization is the cheapest way to shrink a stolen model, and
it moves every weight onto a coarse grid. Each kernel is quantized on its own
(per tensor) and symmetrically, then de-quantized back to its dtype, so the
result loads as the same float architecture.
"""

from __future__ import annotations

import math

import torch

from critprint.errors import InvalidInputError

__all__ = ["quantize", "check_bits"]


def check_bits(bits: float) -> int:
    """Return ``bits`` as an int if it is a whole number in [2, 16], else raise InvalidInputError."""
    whole = (
        isinstance(bits, (int, float))
        and not isinstance(bits, bool)
        and math.isfinite(bits)
        and bits == int(bits)
    )
    if not whole or not 2 <= bits <= 16:
        raise InvalidInputError(f"invalid bits {bits!r}: expected a whole number in [2, 16], e.g. 8")
    return int(bits)


def quantize(state_dict: dict[str, torch.Tensor], bits: int = 8) -> dict[str, torch.Tensor]:
    """Quantize every kernel to ``bits``-bit symmetric integers per tensor and back.

    For each floating tensor with at least two dimensions whose name ends in
    ``weight``, with ``levels = 2 ** (bits - 1) - 1`` (127 at 8 bits):
    ``scale = max|w| / levels`` and ``w_q = round(w / scale).clamp(-levels, levels) * scale``,
    so the tensor takes at most ``2 * levels + 1`` values (255 at 8 bits).
    Biases, normalisation parameters, buffers and all-zero tensors are kept.

    Args:
        state_dict: The model's parameters; not modified.
        bits: Integer width, a whole number in [2, 16].

    Returns:
        A new state dict with the same keys, shapes and dtypes.

    Example:
        >>> quantize({"conv.weight": torch.tensor([[1.0, -0.3]])}, bits=2)["conv.weight"].tolist()
        [[1.0, -0.0]]
    """
    levels = 2 ** (check_bits(bits) - 1) - 1
    result = {name: tensor.detach().clone() for name, tensor in state_dict.items()}
    for name, tensor in state_dict.items():
        if not (name.endswith("weight") and tensor.is_floating_point() and tensor.ndim >= 2):
            continue
        weights = tensor.detach().to(torch.float64)
        peak = weights.abs().max()
        if peak == 0 or not torch.isfinite(peak):
            continue
        scale = peak / levels
        integers = torch.round(weights / scale).clamp(-levels, levels)
        result[name] = (integers * scale).to(tensor.dtype)
    return result
