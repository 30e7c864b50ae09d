"""Baseline fingerprints ProjCL and PoolCL: IPGuard applied to classifier heads.

"Fingerprinting Deep Image Restoration Models" (Quan et al., ICCV 2023)
compares its critical image with these two baselines.

See :mod:`critprint.baselines.ipguard` for the method and
:mod:`critprint.baselines.heads` for the two heads.
"""

from critprint.baselines.heads import HEADS
from critprint.baselines.ipguard import (
    IPGuardFingerprint,
    IPGuardSettings,
    classifier_logits,
    ipguard_fingerprint,
    is_derived,
    match_rate,
    threshold_from_negatives,
)

__all__ = [
    "HEADS",
    "IPGuardSettings",
    "IPGuardFingerprint",
    "classifier_logits",
    "ipguard_fingerprint",
    "match_rate",
    "threshold_from_negatives",
    "is_derived",
]
