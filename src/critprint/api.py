"""User-level operations: fingerprint, register, verify and identify models.

The command-line interface and the evaluation call these functions, so every
reported number measures exactly what a user runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from critprint.decision import Decision, Verdict, decide
from critprint.errors import FingerprintFormatError, IncompatibleModelError, InvalidInputError, RegistryError
from critprint.extraction import ProgressCallback, check_compatible, extract_critical_image
from critprint.features import feature_vector
from critprint.fingerprint import Fingerprint, ModelIdentity, now_utc, software_versions
from critprint.models import ModelHandle, infer_task, load_model
from critprint.protocol import Protocol, get_protocol
from critprint.query import ProbeSettings, model_query, probe_inputs, run_queries
from critprint.registry import Registry, RegistryEntry

__all__ = [
    "Verification",
    "resolve_protocol",
    "fingerprint_model",
    "register",
    "verify",
    "verify_detailed",
    "verify_registered",
    "identify",
    "import_fingerprint",
]

logger = logging.getLogger(__name__)

ModelSpec = str | Path | ModelHandle


@dataclass(frozen=True)
class Verification:
    """The result of comparing a suspect with one source fingerprint.

    ``ratio`` is distance / threshold: below 1 the suspect is ``derived``.
    """

    source: str
    suspect: str
    task: str
    distance: float
    threshold: float
    ratio: float
    probability: float
    verdict: Verdict
    protocol: str
    elapsed_seconds: float
    feature_length: int
    source_sha256: str
    suspect_sha256: str
    protocol_settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-compatible dictionary."""
        return asdict(self)


def _as_handle(model: ModelSpec) -> ModelHandle:
    return model if isinstance(model, ModelHandle) else load_model(model)


def resolve_protocol(
    handle: ModelHandle,
    protocol: str | Protocol = "quick",
    task: str | None = None,
    custom_degradation: str | None = None,
) -> Protocol:
    """Return the protocol to fingerprint ``handle`` with.

    A preset name is resolved for the model's task and scale; a
    :class:`Protocol` is checked against them. Random parameters left open
    (a motion kernel's angle) are drawn from the seed and recorded
    (:meth:`Protocol.resolved`).

    Args:
        handle: The loaded model.
        protocol: A preset name or a protocol.
        task: The task; inferred when the model states it, and ``"custom"``
            when only ``custom_degradation`` is given.
        custom_degradation: ``package.module:function`` of a custom
            degradation, for a preset name only.

    Raises:
        InvalidInputError: If the preset name is unknown.
        IncompatibleModelError: If the task or scale does not fit the model.
    """
    if isinstance(protocol, Protocol):
        resolved_task = infer_task(handle, task or protocol.task)
        if protocol.task != resolved_task:
            raise IncompatibleModelError(
                f"protocol task {protocol.task!r} does not match the model's task {resolved_task!r}"
            )
        return protocol.resolved()
    if custom_degradation:
        resolved = infer_task(handle, task or "custom")
        return get_protocol(protocol, resolved, scale=handle.scale, custom_degradation=custom_degradation)
    return get_protocol(protocol, infer_task(handle, task), scale=handle.scale)


def _identity(handle: ModelHandle) -> ModelIdentity:
    return ModelIdentity(
        source=handle.source,
        sha256=handle.sha256,
        format=handle.format,
        architecture=handle.architecture,
        input_channels=handle.input_channels,
        output_channels=handle.output_channels,
        scale=handle.scale,
    )


def fingerprint_model(
    model: ModelSpec,
    protocol: str | Protocol = "quick",
    task: str | None = None,
    progress: ProgressCallback | None = None,
) -> Fingerprint:
    """Extract a model's fingerprint.

    Args:
        model: A path, ``zoo:NAME`` or a loaded handle.
        protocol: A preset name (``"paper"``, ``"quick"``) or a protocol.
        task: One of :data:`critprint.protocol.TASKS`; inferred when the
            model states it.
        progress: Optional ``callback(step, total, loss)``.

    The record also holds the model's outputs on the query probes made from
    its critical image with the default :class:`ProbeSettings`, for
    query-only verification.
    """
    handle = _as_handle(model)
    resolved = resolve_protocol(handle, protocol, task)
    result = extract_critical_image(handle, resolved, progress)
    probes = ProbeSettings()
    outputs = run_queries(model_query(handle, resolved), probe_inputs(result.critical_image, resolved, probes),
                          handle.scale)
    return Fingerprint(
        critical_image=result.critical_image,
        features=feature_vector(result.critical_image, resolved.features),
        protocol=resolved,
        model=_identity(handle),
        versions=software_versions(),
        created_at=now_utc(),
        loss=result.loss,
        seconds=result.seconds,
        probe_outputs=outputs,
        probe_settings=probes.to_dict(),
    )


def register(
    model: ModelSpec,
    name: str,
    registry: Registry | None = None,
    protocol: str | Protocol = "quick",
    task: str | None = None,
    progress: ProgressCallback | None = None,
) -> RegistryEntry:
    """Fingerprint a model and store it under a unique name.

    The name is checked before the extraction, so a duplicate fails fast;
    it is checked again atomically when the record is written.

    Raises:
        DuplicateNameError: If ``name`` is already registered.
    """
    registry = registry or Registry()
    registry.ensure_available(name)
    fingerprint = fingerprint_model(model, protocol, task, progress)
    return registry.add(name, fingerprint)


def _compare(
    source_name: str, source: Fingerprint, suspect: ModelHandle, suspect_features: Any, seconds: float
) -> Verification:
    decision: Decision = decide(source.features, suspect_features, source.protocol.alpha, source.protocol.sigma_h)
    return Verification(
        source=source_name,
        suspect=suspect.source,
        task=source.protocol.task,
        distance=decision.distance,
        threshold=decision.threshold,
        ratio=decision.ratio,
        probability=decision.probability,
        verdict=decision.verdict,
        protocol=source.protocol.name,
        elapsed_seconds=seconds,
        feature_length=decision.length,
        source_sha256=source.model.sha256,
        suspect_sha256=suspect.sha256,
        protocol_settings=source.protocol.to_dict(),
    )


def _check_suspect(source: Fingerprint, suspect: ModelHandle) -> None:
    if suspect.input_channels != source.model.input_channels:
        raise IncompatibleModelError(
            f"suspect {suspect.source} has {suspect.input_channels} channels but the source fingerprint was "
            f"made from a {source.model.input_channels}-channel model; compare models with equal channels"
        )
    if suspect.scale != source.protocol.scale:
        raise IncompatibleModelError(
            f"suspect {suspect.source} has scale {suspect.scale} but the source fingerprint is a "
            f"{source.protocol.task} fingerprint of a scale-{source.protocol.scale} model; "
            "compare models of the same task and scale"
        )
    check_compatible(suspect, source.protocol)


def check_custom_allowed(protocol: Protocol, source_name: str, allow_custom: bool) -> None:
    """Reject a custom-degradation protocol unless the caller trusts the module it names.

    A fingerprint made elsewhere names the module its custom degradation
    imports, so running it is opt-in, as TorchScript is.

    Raises:
        InvalidInputError: If the protocol's task is ``custom`` and
            ``allow_custom`` is false.
    """
    if protocol.task == "custom" and not allow_custom:
        raise InvalidInputError(
            f"fingerprint {source_name} uses the custom degradation {protocol.custom_degradation!r}, which imports "
            "and runs that module; pass --allow-custom (allow_custom=True) if you trust it"
        )


def verify(
    suspect: ModelSpec,
    source: Fingerprint,
    source_name: str = "fingerprint",
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
) -> Verification:
    """Decide whether a suspect model is derived from a source fingerprint.

    The suspect's critical image is extracted with exactly the source's
    recorded protocol, seed included, then the features are compared.

    Args:
        allow_custom: Run a custom degradation the fingerprint names; it
            imports a module, so only for fingerprints you trust.

    Raises:
        IncompatibleModelError: If the suspect's channels or scale differ from
            the source's.
        InvalidInputError: If the fingerprint uses a custom degradation and
            ``allow_custom`` is false.
    """
    return verify_detailed(suspect, source, source_name, progress, allow_custom)[0]


def verify_detailed(
    suspect: ModelSpec,
    source: Fingerprint,
    source_name: str = "fingerprint",
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
) -> tuple[Verification, torch.Tensor, torch.Tensor]:
    """Run :func:`verify` and also return the suspect's critical image (C, H, W) and features (L,).

    The evidence report shows them beside the source's.
    """
    start = time.perf_counter()
    check_custom_allowed(source.protocol, source_name, allow_custom)
    handle = _as_handle(suspect)
    _check_suspect(source, handle)
    result = extract_critical_image(handle, source.protocol, progress)
    features = feature_vector(result.critical_image, source.protocol.features)
    verification = _compare(source_name, source, handle, features, time.perf_counter() - start)
    return verification, result.critical_image, features


def verify_registered(
    suspect: ModelSpec,
    name: str,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
) -> Verification:
    """Verify a suspect against the registered fingerprint called ``name``."""
    registry = registry or Registry()
    return verify(suspect, registry.load(name), name, progress, allow_custom)


def identify(
    suspect: ModelSpec,
    registry: Registry | None = None,
    top: int | None = None,
    task: str | None = None,
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
) -> list[Verification]:
    """Compare a suspect with every registered fingerprint of its task.

    Fingerprints of another task, scale or channel count are skipped. The
    suspect is extracted once per distinct protocol among the rest.
    Fingerprints with a custom degradation are skipped unless
    ``allow_custom`` is true, because running one imports the module it names.

    Args:
        suspect: A path, ``zoo:NAME`` or a loaded handle.
        registry: The registry to search; the default one if None.
        top: Keep only the ``top`` closest results; all if None.
        task: The suspect's task; inferred when the model states it.
        progress: Optional ``callback(step, total, loss)``, per extraction.

    Returns:
        Results sorted by distance, closest first.
    """
    start = time.perf_counter()
    registry = registry or Registry()
    handle = _as_handle(suspect)
    suspect_task = infer_task(handle, task)
    groups: dict[str, list[tuple[RegistryEntry, Fingerprint]]] = {}
    for entry in registry.entries(task=suspect_task):
        if entry.scale != handle.scale or entry.channels != handle.input_channels:
            logger.info("skipping %s: scale %d and %d channels do not match the suspect", entry.name,
                        entry.scale, entry.channels)
            continue
        try:
            fingerprint = registry.load(entry.name)
        except (RegistryError, FingerprintFormatError) as error:
            logger.warning("skipping %s: %s", entry.name, error)
            continue
        if fingerprint.protocol.task == "custom" and not allow_custom:
            logger.warning("skipping %s: its custom degradation runs a module; pass --allow-custom to use it",
                           entry.name)
            continue
        # The parsed protocol, not the stored text: records written before a
        # field was added lack its key but describe the same extraction.
        groups.setdefault(fingerprint.protocol.to_json(), []).append((entry, fingerprint))

    results: list[Verification] = []
    for members in groups.values():
        protocol = members[0][1].protocol
        extraction = extract_critical_image(handle, protocol, progress)
        features = feature_vector(extraction.critical_image, protocol.features)
        for entry, fingerprint in members:
            results.append(_compare(entry.name, fingerprint, handle, features, time.perf_counter() - start))
    results.sort(key=lambda item: item.distance)
    return results[:top] if top is not None else results


def import_fingerprint(path: str | Path, name: str | None = None, registry: Registry | None = None) -> RegistryEntry:
    """Register a fingerprint file made elsewhere, for example by ``critprint export --bundle``.

    Args:
        path: The fingerprint file.
        name: The name to register it under; by default the name it was
            registered under where it was made.
        registry: The registry to add it to; the default one if None.

    Raises:
        FingerprintFormatError: If the file is not a valid fingerprint.
        InvalidInputError: If no name is given and the file records none.
        DuplicateNameError: If the name is already registered.
    """
    from critprint.fingerprint import load_fingerprint

    record = load_fingerprint(path)
    chosen = name or record.name
    if not chosen:
        raise InvalidInputError(f"fingerprint file {path} records no name; pass --name NAME")
    return (registry or Registry()).add(chosen, record)
