"""The fingerprint record and its file format.

A fingerprint file is a safetensors file with two tensors: ``critical_image``
(float32, shape (C, H, W), values in [0, 1]) and ``features`` (float64, shape
(L,)), and, in files made since query-only verification exists, a third,
``probe_outputs`` (float32, shape (K, C, H, W), values k / 255): the source
model's outputs on the K query probes (:mod:`critprint.query`). Its metadata
key ``critprint`` contains a JSON object with the format version, the full
protocol (seed included), the model's identity, the software versions, the
creation time, the registered name and, with ``probe_outputs``, the probe
settings under ``probes``. The format version stays 1: the extra tensor and
key are optional, so older files load here and newer files load in older
releases. Files are written to a temporary name
and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from critprint.errors import FingerprintFormatError
from critprint.protocol import Protocol

__all__ = [
    "FORMAT_VERSION",
    "ModelIdentity",
    "Fingerprint",
    "save_fingerprint",
    "load_fingerprint",
    "software_versions",
    "atomic_write_bytes",
    "fingerprint_bytes",
    "fingerprint_from_bytes",
]

FORMAT_VERSION = 1
_FORMAT_NAME = "critprint-fingerprint"


@dataclass(frozen=True)
class ModelIdentity:
    """Identity of the model a fingerprint was extracted from."""

    source: str
    sha256: str
    format: str
    architecture: str
    input_channels: int
    output_channels: int
    scale: int

    def to_dict(self) -> dict[str, Any]:
        """Return the identity as a JSON-compatible dictionary."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Fingerprint:
    """A model's fingerprint: its critical image, features and provenance.

    Attributes:
        critical_image: float32 CPU tensor (C, H, W) in [0, 1].
        features: float64 CPU tensor (L,).
        protocol: The protocol it was extracted with.
        model: The source model's identity.
        versions: Versions of Python, torch, critprint and others.
        created_at: ISO 8601 UTC time of the extraction.
        loss: Final objective value.
        seconds: Extraction time.
        name: The name it was registered under, or "" before registration.
        probe_outputs: float32 CPU tensor (K, C, H, W) in [0, 1], the source
            model's 8-bit outputs on the query probes, or None in files made
            before query-only verification.
        probe_settings: The settings the probes were made with
            (:class:`critprint.query.ProbeSettings` as a dictionary), or None.
    """

    critical_image: torch.Tensor
    features: torch.Tensor
    protocol: Protocol
    model: ModelIdentity
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    loss: float = float("nan")
    seconds: float = 0.0
    name: str = ""
    probe_outputs: torch.Tensor | None = None
    probe_settings: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        """The protocol's task."""
        return self.protocol.task

    def metadata(self) -> dict[str, Any]:
        """Return everything but the tensors, as stored in the file."""
        return {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "protocol": self.protocol.to_dict(),
            "model": self.model.to_dict(),
            "versions": self.versions,
            "created_at": self.created_at,
            "loss": self.loss,
            "seconds": self.seconds,
            "name": self.name,
        } | ({"probes": self.probe_settings} if self.probe_outputs is not None else {})


def software_versions() -> dict[str, str]:
    """Return the versions of the software that shapes a fingerprint."""
    import numpy
    import scipy
    import spandrel

    from critprint import __version__

    return {
        "critprint": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spandrel": getattr(spandrel, "__version__", "unknown"),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def now_utc() -> str:
    """Return the current UTC time in ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; give the result
        # the permissions an ordinary open() would, under the current umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fingerprint_bytes(fingerprint: Fingerprint) -> bytes:
    """Serialise a fingerprint to the bytes of its safetensors file."""
    from safetensors.torch import save

    tensors = {
        "critical_image": fingerprint.critical_image.detach().to("cpu", torch.float32).contiguous(),
        "features": fingerprint.features.detach().to("cpu", torch.float64).contiguous(),
    }
    if fingerprint.probe_outputs is not None:
        tensors["probe_outputs"] = fingerprint.probe_outputs.detach().to("cpu", torch.float32).contiguous()
    metadata = {"critprint": json.dumps(fingerprint.metadata(), sort_keys=True)}
    return save(tensors, metadata=metadata)


def save_fingerprint(fingerprint: Fingerprint, path: str | Path) -> Path:
    """Write a fingerprint file atomically and return its path."""
    target = Path(path)
    atomic_write_bytes(target, fingerprint_bytes(fingerprint))
    return target


def fingerprint_from_bytes(data: bytes, label: str = "<bytes>") -> Fingerprint:
    """Parse the bytes of a fingerprint file; ``label`` names it in error messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise FingerprintFormatError(f"corrupt fingerprint file {label}: {error}; re-export or re-register it") from None
    raw = header.get("__metadata__", {}).get("critprint")
    if raw is None:
        raise FingerprintFormatError(f"file {label} is a safetensors file but not a critprint fingerprint")
    try:
        meta = json.loads(raw)
        version = int(meta["format_version"])
        if meta.get("format") != _FORMAT_NAME:
            raise FingerprintFormatError(f"file {label} is not a critprint fingerprint")
        if version > FORMAT_VERSION:
            raise FingerprintFormatError(
                f"fingerprint {label} has format version {version}, newer than the supported "
                f"{FORMAT_VERSION}; upgrade critprint"
            )
        return Fingerprint(
            critical_image=tensors["critical_image"],
            features=tensors["features"],
            protocol=Protocol.from_dict(meta["protocol"]),
            model=ModelIdentity(**meta["model"]),
            versions=dict(meta.get("versions", {})),
            created_at=str(meta.get("created_at", "")),
            loss=float(meta.get("loss", float("nan"))),
            seconds=float(meta.get("seconds", 0.0)),
            name=str(meta.get("name", "")),
            probe_outputs=tensors.get("probe_outputs"),
            probe_settings=dict(meta["probes"]) if "probe_outputs" in tensors else None,
        )
    except FingerprintFormatError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise FingerprintFormatError(f"corrupt fingerprint metadata in {label}: {error!r}") from None


def load_fingerprint(path: str | Path) -> Fingerprint:
    """Read a fingerprint file written by :func:`save_fingerprint`.

    Raises:
        FingerprintFormatError: If the file is missing, corrupt, truncated,
            not a fingerprint, or of a newer format version.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise FingerprintFormatError(f"fingerprint file not found: {source}; check the path") from None
    except IsADirectoryError:
        raise FingerprintFormatError(f"fingerprint path {source} is a directory; expected a .safetensors file") from None
    return fingerprint_from_bytes(data, str(source))
