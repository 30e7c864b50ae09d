"""The results file of a scan: JSON lines, one per model, written whole as each finishes.

Each line is flushed and synced to disk before the next model is reported, so
a killed scan loses at most the line it was writing. ``resume`` reads the
file back, cuts a torn last line, and lists the models already done.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal

from critprint.errors import InvalidInputError

__all__ = ["ScanMode", "ScanResult", "ResultsFile", "worker_label"]

logger = logging.getLogger(__name__)

ScanMode = Literal["register", "identify"]


def worker_label() -> str:
    """Return ``HOST:PID`` of the process that ran a model."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ScanResult:
    """The outcome of one model of a scan: one line of the results file.

    Attributes:
        name: The model's name in the scan (its key in the results file).
        path: The model file or ``zoo:NAME``.
        mode: ``register`` or ``identify``.
        status: ``ok``, or ``error`` with ``error`` set.
        seconds: Wall-clock time spent on the model.
        worker: ``HOST:PID`` of the process that ran it.
        finished_at: ISO 8601 UTC time it finished.
        error: One-line message of an error.
        error_type: The exception's class name.
        registered: ``register``: the registry entry.
        already_registered: ``register``: the name was registered before, for
            the same model file (an earlier, interrupted run of this scan).
        matches: ``identify``: every comparison, closest first, as ``verify
            --json`` writes it.
        derived_from: ``identify``: the sources judged ``derived``.
    """

    name: str
    path: str
    mode: ScanMode
    status: Literal["ok", "error"]
    seconds: float
    worker: str
    finished_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    error: str | None = None
    error_type: str | None = None
    registered: dict[str, Any] | None = None
    already_registered: bool | None = None
    matches: list[dict[str, Any]] | None = None
    derived_from: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-compatible dictionary, without unset fields."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ScanResult:
        """Rebuild a result from its line; unknown keys are ignored."""
        known = {key: value for key, value in record.items() if key in cls.__dataclass_fields__}
        return cls(**known)


class ResultsFile:
    """The JSON-lines results file of one scan, open for appending.

    Only one scan writes a file at a time: the file is locked while open.

    Args:
        path: The file.
        mode: The scan's mode; a resumed file must record the same.
        resume: Continue an existing file. Without it an existing, non-empty
            file is an error, so a scan never mixes into another's results.

    Raises:
        InvalidInputError: If the file exists without ``resume``, contains
            another mode's results, has a malformed line before the last,
            or another scan is writing it.
    """

    def __init__(self, path: Path, mode: ScanMode, resume: bool) -> None:
        self.path = path
        self.mode = mode
        self.results: dict[str, ScanResult] = {}
        self.torn_bytes = 0
        if path.exists() and path.stat().st_size > 0 and not resume:
            raise InvalidInputError(
                f"results file {path} already exists; pass --resume to continue that scan or choose another --out"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: IO[bytes] = open(path, "a+b")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise InvalidInputError(f"cannot open results file {path}: {error.strerror}; choose another --out") from None
        try:
            fcntl.flock(self._stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._stream.close()
            raise InvalidInputError(
                f"another scan is writing {path}; wait for it to finish or choose another --out"
            ) from None
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Read the lines already written; cut a torn last line."""
        self._stream.seek(0)
        data = self._stream.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.torn_bytes = len(data) - end
            logger.warning("cutting a torn last line of %d bytes from %s", self.torn_bytes, self.path)
            self._stream.truncate(end)
            self._stream.flush()
            os.fsync(self._stream.fileno())
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                result = ScanResult.from_dict(json.loads(line))
            except (ValueError, TypeError) as error:
                raise InvalidInputError(
                    f"results file {self.path} line {number} is not a scan result ({error}); "
                    "remove that line or choose another --out"
                ) from None
            if result.mode != self.mode:
                raise InvalidInputError(
                    f"results file {self.path} contains {result.mode} results, not {self.mode}; "
                    f"rerun with --{result.mode} or choose another --out"
                )
            self.results[result.name] = result

    def append(self, result: ScanResult) -> None:
        """Write one result as one whole line, flushed and synced to disk."""
        line = json.dumps(result.to_dict(), default=str, sort_keys=True).encode("utf-8") + b"\n"
        self._stream.write(line)
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self.results[result.name] = result

    def close(self) -> None:
        """Release the lock and close the file."""
        if not self._stream.closed:
            self._stream.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
