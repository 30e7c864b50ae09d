"""Model modifications a thief might apply, used to test fingerprint robustness."""

from critprint.attacks.pruning import prune_magnitude

__all__ = ["prune_magnitude"]
