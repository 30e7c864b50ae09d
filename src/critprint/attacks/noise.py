"""Weight perturbation attacks: Gaussian weight noise and a float16 round trip.

Both change every weight slightly without any training: weight noise adds
random values proportional to each tensor's spread, and the float16 round
trip rounds every value to half precision, as a thief who ships a half
precision copy would.
"""

from __future__ import annotations

import math

import torch

from critprint.errors import InvalidInputError

__all__ = ["add_weight_noise", "half_precision", "check_sigma"]


def check_sigma(sigma: float) -> float:
    """Return ``sigma`` if it is a finite number in (0, 10], else raise InvalidInputError."""
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and 0 < sigma <= 10):
        raise InvalidInputError(
            f"invalid sigma {sigma!r}: expected a number in (0, 10], the noise std relative to each tensor's std, e.g. 0.05"
        )
    return float(sigma)


def add_weight_noise(state_dict: dict[str, torch.Tensor], sigma: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Add N(0, (sigma * std(w))^2) noise to every floating tensor with at least two dimensions.

    ``std(w)`` is the population standard deviation of the tensor's own
    values, so each kernel is perturbed in proportion to its spread. The
    noise is drawn in state-dict order from one generator seeded ``seed``.
    One-dimensional tensors (biases, normalisation parameters) are kept.

    Args:
        state_dict: The model's parameters; not modified.
        sigma: Noise std relative to each tensor's std, in (0, 10].
        seed: Seed of the noise generator.

    Returns:
        A new state dict with the same keys, shapes and dtypes.
    """
    check_sigma(sigma)
    generator = torch.Generator().manual_seed(seed)
    result = {name: tensor.detach().clone() for name, tensor in state_dict.items()}
    for name, tensor in state_dict.items():
        if not (tensor.is_floating_point() and tensor.ndim >= 2):
            continue
        weights = tensor.detach().to(torch.float64)
        spread = weights.std(correction=0)
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        result[name] = (weights + sigma * spread * noise).to(tensor.dtype)
    return result


def half_precision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Round every floating tensor to float16 and back to its dtype.

    Values beyond float16's range become infinite, as they would in a half
    precision copy; trained restoration models stay far inside it.

    Returns:
        A new state dict with the same keys, shapes and dtypes.
    """
    return {
        name: tensor.detach().to(torch.float16).to(tensor.dtype).clone() if tensor.is_floating_point() else tensor.detach().clone()
        for name, tensor in state_dict.items()
    }
