"""critprint: fingerprint deep image-restoration models through critical images.

The method follows "Fingerprinting Deep Image Restoration Models" (Quan, Teng,
Xu, Huang, Ji; ICCV 2023). An input optimised through the model becomes its
critical image, which colour and local gradient pattern histograms describe.
A chi-squared threshold on the histogram distance decides whether a suspect
is derived from a source.

Example:
    >>> from critprint import get_protocol, threshold
    >>> get_protocol("quick", "denoise").size
    64
    >>> round(threshold(30), 7)
    0.0001387
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

from critprint.api import Verification, fingerprint_model, identify, register, verify, verify_registered
from critprint.calibration import Calibration, calibrate_references, load_calibration, save_calibration
from critprint.decision import Decision, decide, feature_distance, threshold
from critprint.errors import (
    CritprintError,
    DuplicateNameError,
    FingerprintFormatError,
    IncompatibleModelError,
    InvalidInputError,
    ModelLoadError,
    NameNotFoundError,
    RegistryError,
)
from critprint.extraction import ExtractionResult, extract_critical_image
from critprint.features import colour_histogram, feature_vector, lgp_codes, lgp_histogram
from critprint.fingerprint import Fingerprint, ModelIdentity, load_fingerprint, save_fingerprint
from critprint.models import ModelHandle, load_model
from critprint.protocol import FeatureSettings, Protocol, get_protocol
from critprint.query import ProbeSettings, command_query, model_query
from critprint.registry import Registry, RegistryEntry
from critprint.verdict import QueryVerification, calibrated_verdict, verify_query

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "Calibration",
    "CritprintError",
    "Decision",
    "DuplicateNameError",
    "ExtractionResult",
    "FeatureSettings",
    "Fingerprint",
    "FingerprintFormatError",
    "IncompatibleModelError",
    "InvalidInputError",
    "ModelHandle",
    "ModelIdentity",
    "ModelLoadError",
    "NameNotFoundError",
    "ProbeSettings",
    "Protocol",
    "QueryVerification",
    "Registry",
    "RegistryEntry",
    "RegistryError",
    "Verification",
    "calibrate_references",
    "calibrated_verdict",
    "colour_histogram",
    "command_query",
    "decide",
    "extract_critical_image",
    "feature_distance",
    "feature_vector",
    "fingerprint_model",
    "get_protocol",
    "identify",
    "lgp_codes",
    "lgp_histogram",
    "load_calibration",
    "load_fingerprint",
    "load_model",
    "model_query",
    "register",
    "save_calibration",
    "save_fingerprint",
    "threshold",
    "verify",
    "verify_query",
    "verify_registered",
]
