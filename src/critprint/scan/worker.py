"""One model of a scan, as a worker process runs it.

:func:`run_item` is the unit of work of every executor: it takes only
picklable arguments, opens the registry itself, and never raises for a
broken model, so one bad file gives one error line and the scan goes on.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

from critprint.errors import CritprintError
from critprint.fingerprint import Fingerprint
from critprint.protocol import DEFAULT_PROTOCOL
from critprint.registry import Registry, RegistryEntry
from critprint.scan.results import ScanMode, ScanResult, worker_label
from critprint.scan.sources import ScanItem

__all__ = ["CachingRegistry", "ScanJob", "run_item", "set_threads"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanJob:
    """The settings a scan applies to each of its models.

    Attributes:
        mode: ``register`` each model, or ``identify`` it among the registry's
            fingerprints.
        registry: The registry's folder or database URL; None for the default.
        files: Where the registry's fingerprint files are; None for its default.
        protocol: Preset for ``register``: ``quick`` or ``paper``.
        size: Override of the critical-image side for ``register``.
        iterations: Override of the number of Adam steps for ``register``.
        seed: Override of the random seed for ``register``.
        top: ``identify``: keep the ``top`` closest fingerprints; all if None.
        allow_custom: ``identify``: run custom degradations fingerprints name.
        torchscript: Allow TorchScript model files.
        threads: torch threads per worker.
        show_warnings: Let workers print the warnings of torch and spandrel
            (``--debug``); otherwise they are hidden, as in the CLI.
    """

    mode: ScanMode
    registry: str | None = None
    files: str | None = None
    protocol: str = DEFAULT_PROTOCOL
    size: int | None = None
    iterations: int | None = None
    seed: int | None = None
    top: int | None = None
    allow_custom: bool = False
    torchscript: bool = False
    threads: int = 1
    show_warnings: bool = False


class CachingRegistry(Registry):
    """A registry that a worker reuses across models, reading each fingerprint file once.

    ``identify`` ranks the registered fingerprints by the feature vectors in
    the database's rows and reads the files of its matches, and of rows that
    lack a feature vector. A fingerprint already read and checked is reused
    while its row records the same file hash; one registered again under its
    name has a new hash, so it is read again.
    """

    def __init__(self, root: str | None = None, files: str | None = None) -> None:
        super().__init__(root, files=files)
        self._read: dict[tuple[str, str], Fingerprint] = {}

    def load_entry(self, entry: RegistryEntry) -> Fingerprint:
        key = (entry.name, entry.file_sha256)
        if key not in self._read:
            self._read[key] = super().load_entry(entry)
        return self._read[key]


# One registry per location in each worker process, so its cache lasts across models.
_REGISTRIES: dict[tuple[str | None, str | None], CachingRegistry] = {}


def _registry(job: ScanJob) -> CachingRegistry:
    key = (job.registry, job.files)
    if key not in _REGISTRIES:
        _REGISTRIES[key] = CachingRegistry(job.registry, files=job.files)
    return _REGISTRIES[key]


def set_threads(threads: int) -> None:
    """Give torch ``threads`` threads in this process; several workers share the CPU cores."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _error_message(error: BaseException) -> str:
    if isinstance(error, CritprintError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _register(job: ScanJob, item: ScanItem, registry: Any, handle: Any) -> dict[str, Any]:
    from critprint import api

    options = item.options
    settings = api.resolve_protocol(handle, options.get("protocol", job.protocol), item.task)
    overrides = {
        key: value for key in ("size", "iterations", "seed")
        if (value := options.get(key, getattr(job, key))) is not None
    }
    if overrides:
        settings = settings.replace(name="custom", **overrides)
    if registry.contains(item.name):
        entry = registry.get(item.name)
        # A model registered by an earlier, interrupted run of this scan whose
        # result line was never written: report it instead of failing.
        if entry.model_sha256 == handle.sha256 and entry.protocol_json == settings.to_json():
            return {"registered": entry.to_dict(), "already_registered": True}
    entry = api.register(handle, item.name, registry, protocol=settings)
    return {"registered": entry.to_dict(), "already_registered": False}


def _identify(job: ScanJob, item: ScanItem, registry: Any, handle: Any) -> dict[str, Any]:
    from critprint import api

    results = api.identify(handle, registry, top=job.top, task=item.task, allow_custom=job.allow_custom)
    return {
        "matches": [result.to_dict() for result in results],
        "derived_from": [result.source for result in results if result.verdict == "derived"],
    }


def run_item(job: ScanJob, item: ScanItem) -> ScanResult:
    """Register or identify one model; return its result, an error result if anything fails.

    Never raises for an error of the model, the registry or the extraction;
    KeyboardInterrupt and SystemExit still propagate.
    """
    start = time.perf_counter()
    try:
        from critprint.models import load_model

        set_threads(job.threads)
        if not job.show_warnings:
            warnings.simplefilter("ignore")
        options = item.options
        registry = _registry(job)
        handle = load_model(
            item.path,
            allow_torchscript=bool(options.get("torchscript", job.torchscript)),
            arch=options.get("arch"),
            arch_kwargs=options.get("arch_kwargs"),
        )
        work = _register if job.mode == "register" else _identify
        fields = work(job, item, registry, handle)
    except Exception as error:  # one broken model must not stop the scan
        logger.info("%s failed: %s", item.path, error, exc_info=True)
        return ScanResult(
            name=item.name, path=item.path, mode=job.mode, status="error",
            seconds=time.perf_counter() - start, worker=worker_label(),
            error=_error_message(error), error_type=type(error).__name__,
        )
    return ScanResult(
        name=item.name, path=item.path, mode=job.mode, status="ok",
        seconds=time.perf_counter() - start, worker=worker_label(), **fields,
    )
