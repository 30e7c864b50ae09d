"""Model modifications a thief might apply, used to test fingerprint robustness.

Each attack takes a source model's state dict and returns an attacked copy
with the same keys, shapes and dtypes, so spandrel loads it as the same
architecture. :func:`run_attack` applies an attack by name, measures the PSNR
change it causes and calibrates its strength to a PSNR budget (1 dB by
default, as in the paper).
"""

from critprint.attacks.distillation import distill, reinitialize
from critprint.attacks.finetune import finetune
from critprint.attacks.noise import add_weight_noise, half_precision
from critprint.attacks.pruning import channel_prune, prune_channels, prune_magnitude
from critprint.attacks.quality import RestorationTask, measure_psnr, module_from_state_dict
from critprint.attacks.quantization import quantize
from critprint.attacks.suite import ATTACKS, AttackOutcome, AttackSpec, run_attack

__all__ = [
    "ATTACKS",
    "AttackOutcome",
    "AttackSpec",
    "RestorationTask",
    "add_weight_noise",
    "channel_prune",
    "distill",
    "finetune",
    "half_precision",
    "measure_psnr",
    "module_from_state_dict",
    "prune_channels",
    "prune_magnitude",
    "quantize",
    "reinitialize",
    "run_attack",
]
