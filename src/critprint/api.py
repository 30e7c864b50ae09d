"""User-level operations: fingerprint, register, verify and identify models.

The command-line interface and the evaluation call these functions, so every
reported number measures exactly what a user runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from critprint.decision import Decision, Verdict, decide, feature_distances
from critprint.errors import FingerprintFormatError, IncompatibleModelError, InvalidInputError, RegistryError
from critprint.extraction import ProgressCallback, Runtime, check_compatible, extract_critical_image
from critprint.features import feature_vector
from critprint.fingerprint import Fingerprint, ModelIdentity, now_utc, software_versions
from critprint.models import DEFAULT_NOISE_MAP_LEVEL, ModelHandle, infer_task, load_model
from critprint.protocol import DEFAULT_PROTOCOL, Protocol, get_protocol
from critprint.query import ProbeSettings, model_query, probe_inputs, run_queries
from critprint.registry import IndexRow, Registry, RegistryEntry, decode_features
from critprint.userimport import first_line

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
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    task: str | None = None,
    custom_degradation: str | None = None,
    *,
    noise_sigma: float | None = None,
    noise_map_level: float | None = None,
) -> Protocol:
    """Return the protocol to fingerprint ``handle`` with.

    A preset name is resolved for the model's task and scale; a
    :class:`Protocol` is checked against them. Random parameters left open
    (a motion kernel's angle) are drawn from the seed and recorded
    (:meth:`Protocol.resolved`). For a model with a noise-level input
    (DRUNet, FDnCNN), a preset records the map level too: the one asked
    for, else the architecture's default
    :data:`~critprint.models.DEFAULT_NOISE_MAP_LEVEL`. A protocol passed in
    keeps its level, None included, because it may be a source's protocol
    that another model is probed with.

    The same weights fingerprinted at two inputs (a blind denoiser at two
    noise levels, a DRUNet at two map levels) give two fingerprints, each of
    which records its input, so a suspect is probed at the same one. A
    ``noise_sigma`` or ``noise_map_level`` given here renames the protocol
    ``"custom"``, as any other change to a preset does.

    Args:
        handle: The loaded model.
        protocol: A preset name or a protocol.
        task: The task; inferred when the model states it, and ``"custom"``
            when only ``custom_degradation`` is given.
        custom_degradation: ``package.module:function`` of a custom
            degradation, for a preset name only.
        noise_sigma: Standard deviation of the degradation's Gaussian noise,
            [0, 1] scale (added to the low-resolution input for
            super-resolution); None keeps the protocol's.
        noise_map_level: Level of the constant noise-level map, [0, 1]
            scale, for a model with a noise-level input only; None keeps the
            protocol's, else the architecture's default.

    Raises:
        InvalidInputError: If the preset name is unknown or a noise value is
            negative or not finite.
        IncompatibleModelError: If the task or scale does not fit the model,
            or a map level is set for a model without a noise-level input.
    """
    if isinstance(protocol, Protocol):
        resolved_task = infer_task(handle, task or protocol.task)
        if protocol.task != resolved_task:
            raise IncompatibleModelError(
                f"protocol task {protocol.task!r} does not match the model's task {resolved_task!r}"
            )
        settings = protocol.resolved()
    elif custom_degradation:
        resolved = infer_task(handle, task or "custom")
        settings = get_protocol(protocol, resolved, scale=handle.scale, custom_degradation=custom_degradation)
    else:
        settings = get_protocol(protocol, infer_task(handle, task), scale=handle.scale)
    changes = {
        key: value for key, value in (("noise_sigma", noise_sigma), ("noise_map_level", noise_map_level))
        if value is not None
    }
    if changes:
        settings = settings.replace(name="custom", **changes)
    if noise_map_level is not None:
        _check_noise_map(handle, settings)
    if not isinstance(protocol, Protocol):
        settings = _record_noise_map(handle, settings)
    return settings


def _check_noise_map(handle: ModelHandle, protocol: Protocol) -> None:
    """Reject a map level for a model that has no noise-level input, which would ignore it."""
    if protocol.noise_map_level is not None and not handle.noise_map:
        raise IncompatibleModelError(
            f"invalid noise_map_level {protocol.noise_map_level!r} (--noise-map-level): model {handle.source} "
            f"({handle.architecture}) has no noise-level input; drop it, or set the degradation's noise with "
            "noise_sigma (--noise-sigma)"
        )


def _record_noise_map(handle: ModelHandle, protocol: Protocol) -> Protocol:
    """Return ``protocol`` with the map level stated for a model with a noise-level input, the default included."""
    if handle.noise_map and protocol.noise_map_level is None:
        return protocol.replace(noise_map_level=DEFAULT_NOISE_MAP_LEVEL)
    return protocol


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
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    task: str | None = None,
    progress: ProgressCallback | None = None,
    runtime: Runtime | None = None,
    *,
    noise_sigma: float | None = None,
    noise_map_level: float | None = None,
) -> Fingerprint:
    """Extract a model's fingerprint.

    Args:
        model: A path, ``zoo:NAME`` or a loaded handle.
        protocol: A preset name (``"paper"``, ``"quick"``) or a protocol.
        task: One of :data:`critprint.protocol.TASKS`; inferred when the
            model states it.
        progress: Optional ``callback(step, total, loss)``.
        runtime: Device and precision of the extraction; the CPU in float32 if None.
        noise_sigma: The degradation's noise, [0, 1] scale, instead of the
            protocol's (see :func:`resolve_protocol`).
        noise_map_level: The noise-level map's value, [0, 1] scale, for a
            model with a noise-level input (see :func:`resolve_protocol`).

    The record also contains the model's outputs on the query probes made from
    its critical image with the default :class:`ProbeSettings`, for
    query-only verification.
    """
    handle = _as_handle(model)
    resolved = resolve_protocol(handle, protocol, task, noise_sigma=noise_sigma, noise_map_level=noise_map_level)
    result = extract_critical_image(handle, resolved, progress, runtime)
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
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    task: str | None = None,
    progress: ProgressCallback | None = None,
    runtime: Runtime | None = None,
    *,
    noise_sigma: float | None = None,
    noise_map_level: float | None = None,
) -> RegistryEntry:
    """Fingerprint a model and store it under a unique name.

    The name is checked before the extraction, so a duplicate fails fast;
    it is checked again atomically when the record is written. The same
    weights may be registered under several names, at different inputs:
    ``noise_sigma`` and ``noise_map_level`` as in :func:`resolve_protocol`.
    The record states the noise-map level a model with a noise-level input
    was given, the architecture's default included.

    Raises:
        DuplicateNameError: If ``name`` is already registered.
        IncompatibleModelError: If a map level is set, here or in
            ``protocol``, for a model without a noise-level input.
    """
    registry = registry or Registry()
    registry.ensure_available(name)
    handle = _as_handle(model)
    settings = resolve_protocol(handle, protocol, task, noise_sigma=noise_sigma, noise_map_level=noise_map_level)
    _check_noise_map(handle, settings)
    fingerprint = fingerprint_model(handle, _record_noise_map(handle, settings), task, progress, runtime)
    return registry.add(name, fingerprint)


def _compare(
    source_name: str,
    protocol: Protocol,
    source_sha256: str,
    source_features: torch.Tensor,
    suspect: ModelHandle,
    suspect_features: torch.Tensor,
    seconds: float,
    settings: dict[str, Any] | None = None,
) -> Verification:
    """Decide one pair; ``settings`` is ``protocol.to_dict()`` when the caller already made it."""
    decision: Decision = decide(source_features, suspect_features, protocol.alpha, protocol.sigma_h)
    return Verification(
        source=source_name,
        suspect=suspect.source,
        task=protocol.task,
        distance=decision.distance,
        threshold=decision.threshold,
        ratio=decision.ratio,
        probability=decision.probability,
        verdict=decision.verdict,
        protocol=protocol.name,
        elapsed_seconds=seconds,
        feature_length=decision.length,
        source_sha256=source_sha256,
        suspect_sha256=suspect.sha256,
        protocol_settings=settings if settings is not None else protocol.to_dict(),
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
    runtime: Runtime | None = None,
) -> Verification:
    """Decide whether a suspect model is derived from a source fingerprint.

    The suspect's critical image is extracted with exactly the source's
    recorded protocol, seed included, then the features are compared.

    Args:
        allow_custom: Run a custom degradation the fingerprint names; it
            imports a module, so only for fingerprints you trust.
        runtime: Device and precision of the extraction; the CPU in float32 if None.

    Raises:
        IncompatibleModelError: If the suspect's channels or scale differ from
            the source's.
        InvalidInputError: If the fingerprint uses a custom degradation and
            ``allow_custom`` is false.
    """
    return verify_detailed(suspect, source, source_name, progress, allow_custom, runtime)[0]


def verify_detailed(
    suspect: ModelSpec,
    source: Fingerprint,
    source_name: str = "fingerprint",
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
    runtime: Runtime | None = None,
) -> tuple[Verification, torch.Tensor, torch.Tensor]:
    """Run :func:`verify` and also return the suspect's critical image (C, H, W) and features (L,).

    The evidence report shows them beside the source's.
    """
    start = time.perf_counter()
    check_custom_allowed(source.protocol, source_name, allow_custom)
    handle = _as_handle(suspect)
    _check_suspect(source, handle)
    result = extract_critical_image(handle, source.protocol, progress, runtime)
    features = feature_vector(result.critical_image, source.protocol.features)
    verification = _compare(
        source_name, source.protocol, source.model.sha256, source.features, handle, features,
        time.perf_counter() - start,
    )
    return verification, result.critical_image, features


def verify_registered(
    suspect: ModelSpec,
    name: str,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
    runtime: Runtime | None = None,
) -> Verification:
    """Verify a suspect against the registered fingerprint called ``name``."""
    registry = registry or Registry()
    return verify(suspect, registry.load(name), name, progress, allow_custom, runtime)


def identify(
    suspect: ModelSpec,
    registry: Registry | None = None,
    top: int | None = None,
    task: str | None = None,
    progress: ProgressCallback | None = None,
    allow_custom: bool = False,
    runtime: Runtime | None = None,
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
        runtime: Device and precision of the extractions; the CPU in float32 if None.

    Returns:
        Results sorted by distance, closest first.
    """
    start = time.perf_counter()
    registry = registry or Registry()
    handle = _as_handle(suspect)
    groups = _group_by_protocol(registry, handle, infer_task(handle, task), allow_custom)

    ranked: list[_Ranked] = []
    for protocol, rows in groups.values():
        extraction = extract_critical_image(handle, protocol, progress, runtime)
        features = feature_vector(extraction.critical_image, protocol.features)
        kept, matrix, read = _source_features(registry, rows, int(features.numel()))
        if kept:
            ranked.append(_Ranked(protocol, protocol.to_dict(), features, kept, matrix,
                                  feature_distances(matrix, features), len(kept) - read))

    # One order over every group, sorted as arrays: no object per registered fingerprint.
    sizes = [len(item.rows) for item in ranked]
    distances = torch.cat([item.distances for item in ranked] or [torch.empty(0, dtype=torch.float64)])
    group_of = torch.repeat_interleave(torch.arange(len(ranked)), torch.tensor(sizes, dtype=torch.long)).tolist()
    first_of = [sum(sizes[:group]) for group in range(len(ranked))]
    results: list[Verification] = []
    for position in torch.argsort(distances, stable=True).tolist():
        if top is not None and len(results) == top:
            break
        group = group_of[position]
        verification = _verify_candidate(registry, handle, ranked[group], position - first_of[group],
                                         time.perf_counter() - start)
        if verification is not None:
            results.append(verification)
    return results


@dataclass(frozen=True)
class _Ranked:
    """The registered fingerprints of one protocol, with their distances to the suspect."""

    protocol: Protocol
    settings: dict[str, Any]
    suspect_features: torch.Tensor
    rows: list[IndexRow]
    matrix: torch.Tensor
    distances: torch.Tensor
    first_read: int
    """Index of the first row whose vector was read from its file, already checked."""


def _group_by_protocol(
    registry: Registry, handle: ModelHandle, task: str, allow_custom: bool
) -> dict[str, tuple[Protocol, list[IndexRow]]]:
    """Return the fingerprints a suspect can be compared with, grouped by the protocol its extraction needs."""
    # Each distinct stored text is parsed once. The parsed protocol, not the
    # text, names a group: records written before a field was added lack its
    # key but describe the same extraction.
    parsed: dict[str, tuple[str, Protocol] | None] = {}
    groups: dict[str, tuple[Protocol, list[IndexRow]]] = {}
    for row in registry.index(task=task):
        if row.scale != handle.scale or row.channels != handle.input_channels:
            logger.info("skipping %s: scale %d and %d channels do not match the suspect", row.name,
                        row.scale, row.channels)
            continue
        if row.protocol_json not in parsed:
            parsed[row.protocol_json] = _parse_protocol(row)
        found = parsed[row.protocol_json]
        if found is None:
            continue
        key, protocol = found
        if protocol.task == "custom" and not allow_custom:
            logger.warning("skipping %s: its custom degradation runs a module; pass --allow-custom to use it",
                           row.name)
            continue
        groups.setdefault(key, (protocol, []))[1].append(row)
    return groups


def _parse_protocol(row: IndexRow) -> tuple[str, Protocol] | None:
    """Return a stored protocol and its canonical text, or None (logged) if the text is invalid."""
    try:
        protocol = Protocol.from_dict(json.loads(row.protocol_json))
    except (ValueError, TypeError, InvalidInputError) as error:
        logger.warning("skipping %s: invalid protocol in the registry: %s", row.name, first_line(error))
        return None
    return protocol.to_json(), protocol


def _source_features(
    registry: Registry, rows: list[IndexRow], length: int
) -> tuple[list[IndexRow], torch.Tensor, int]:
    """Return the rows with a feature vector, the (N, L) matrix of those vectors, and how many were read from files.

    A row's vector comes from the database, or from its fingerprint file when
    the row lacks one (a fingerprint registered before the database kept it).
    The rows read from files come last.
    """
    indexed = [row for row in rows if row.features]
    unindexed = [row for row in rows if not row.features]
    try:
        matrix = decode_features([row.features for row in indexed], length)
    except RegistryError as error:
        logger.warning("reading %d fingerprint files instead of the registry's feature vectors: %s",
                       len(indexed), error)
        indexed, unindexed, matrix = [], rows, torch.empty(0, length, dtype=torch.float64)
    kept: list[IndexRow] = []
    vectors: list[torch.Tensor] = []
    for row in unindexed:
        try:
            vectors.append(registry.load(row.name).features.to(torch.float64))
        except (RegistryError, FingerprintFormatError) as error:
            logger.warning("skipping %s: %s", row.name, error)
            continue
        kept.append(row)
    if vectors:
        matrix = torch.cat([matrix, torch.stack(vectors)])
    return indexed + kept, matrix, len(kept)


def _verify_candidate(
    registry: Registry, handle: ModelHandle, ranked: _Ranked, index: int, seconds: float
) -> Verification | None:
    """State one ranked fingerprint's verdict; a derived one is checked against its file first.

    The feature vectors in the registry's rows rank the candidates. A match is
    an accusation, so its verdict rests on the fingerprint file, whose SHA-256
    the registry recorded: a missing or altered file drops the match, and a
    row whose vector differs from its file's is judged by the file's.
    """
    row = ranked.rows[index]
    verification = _compare(row.name, ranked.protocol, row.model_sha256, ranked.matrix[index], handle,
                            ranked.suspect_features, seconds, ranked.settings)
    if verification.verdict != "derived" or index >= ranked.first_read:
        return verification
    try:
        stored = registry.load(row.name).features.to(torch.float64)
    except (RegistryError, FingerprintFormatError) as error:
        logger.warning("skipping %s: %s", row.name, error)
        return None
    if torch.equal(stored, ranked.matrix[index]):
        return verification
    logger.warning("the registry's feature vector of %s differs from its file's; using the file's", row.name)
    return _compare(row.name, ranked.protocol, row.model_sha256, stored, handle, ranked.suspect_features, seconds,
                    ranked.settings)


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
