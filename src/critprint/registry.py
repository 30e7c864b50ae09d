"""The fingerprint registry: a SQLite database plus one file per fingerprint.

Layout of a registry folder::

    registry.sqlite3        one row per fingerprint (WAL journal)
    fingerprints/           the fingerprint files, named NAME-RANDOM.safetensors

A registration writes the file under a temporary name, renames it, then
inserts the row in one transaction. If the insert fails, the file is removed,
so the registry never lists a fingerprint without its file. Each row stores
the SHA-256 of its file, and reading a fingerprint checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from critprint.errors import (
    DuplicateNameError,
    FingerprintFormatError,
    InvalidInputError,
    NameNotFoundError,
    RegistryError,
)
from critprint.fingerprint import Fingerprint, atomic_write_bytes, fingerprint_bytes, fingerprint_from_bytes

__all__ = ["SCHEMA_VERSION", "CheckResult", "RegistryEntry", "Registry", "default_registry_dir", "check_name"]

logger = logging.getLogger(__name__)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS fingerprints (
    name TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    protocol TEXT NOT NULL,
    protocol_json TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_source TEXT NOT NULL,
    architecture TEXT NOT NULL,
    scale INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    file TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""

# Statement k takes a database from schema version k (SQLite's user_version)
# to k + 1. A new schema appends a statement; existing ones never change.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1,)
SCHEMA_VERSION = len(_MIGRATIONS)


def default_registry_dir() -> Path:
    """Return ``$CRITPRINT_HOME`` if set, else the user data folder for critprint."""
    override = os.environ.get("CRITPRINT_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("critprint", appauthor=False))


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid fingerprint name, else raise.

    Valid names are 1 to 128 characters of letters, digits, '.', '_' and '-',
    starting with a letter or digit.
    """
    if not _NAME_PATTERN.match(name):
        raise InvalidInputError(
            f"invalid fingerprint name {name!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _duplicate(name: str) -> DuplicateNameError:
    return DuplicateNameError(
        f"fingerprint name {name!r} is already registered; choose another name or run `critprint remove {name}` first"
    )


@dataclass(frozen=True)
class CheckResult:
    """The integrity of one registered fingerprint.

    Attributes:
        name: The fingerprint's name.
        status: ``ok``, ``missing`` (no file), ``altered`` (SHA-256 differs
            from the one recorded at registration) or ``corrupt`` (the file
            matches its hash but does not parse).
        message: Details for any status but ``ok``.
    """

    name: str
    status: Literal["ok", "missing", "altered", "corrupt"]
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        """Return the result as a JSON-compatible dictionary."""
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass(frozen=True)
class RegistryEntry:
    """One registered fingerprint as the database lists it."""

    name: str
    task: str
    protocol: str
    protocol_json: str
    model_sha256: str
    model_source: str
    architecture: str
    scale: int
    channels: int
    path: Path
    file_sha256: str
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-compatible dictionary (``protocol_json`` omitted)."""
        return {
            "name": self.name,
            "task": self.task,
            "protocol": self.protocol,
            "model_sha256": self.model_sha256,
            "model_source": self.model_source,
            "architecture": self.architecture,
            "scale": self.scale,
            "channels": self.channels,
            "path": str(self.path),
            "file_sha256": self.file_sha256,
            "created_at": self.created_at,
        }


class Registry:
    """A folder of registered fingerprints with unique names.

    Args:
        root: The registry folder; created on first write.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_registry_dir()
        self.database = self.root / "registry.sqlite3"
        self.files = self.root / "fingerprints"

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry path {self.root} is a file; pass a folder with --registry DIR")
        if write:
            try:
                self.files.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise RegistryError(
                    f"cannot create registry folder {self.root}: {error.strerror}; "
                    "pass a writable --registry DIR or set CRITPRINT_HOME"
                ) from None
        elif not self.database.exists():
            yield from self._empty()
            return
        try:
            connection = sqlite3.connect(self.database, timeout=30.0, isolation_level=None)
        except sqlite3.Error as error:
            raise RegistryError(f"cannot open registry {self.database}: {error}") from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._migrate(connection)
            yield connection
        except sqlite3.OperationalError as error:
            raise RegistryError(
                f"cannot use registry {self.database}: {error}; check that the folder is writable"
            ) from None
        except sqlite3.DatabaseError as error:
            raise RegistryError(
                f"registry database {self.database} is corrupt ({error}); restore it from a backup"
            ) from None
        finally:
            connection.close()

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Bring the database to SCHEMA_VERSION in one transaction, or raise if it is newer."""
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"registry {self.database} has schema version {version}, newer than the supported "
                f"{SCHEMA_VERSION}; upgrade critprint"
            )
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between the read above and the lock.
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for statement in _MIGRATIONS[version:]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        logger.info("migrated %s from schema version %d to %d", self.database, version, SCHEMA_VERSION)

    @staticmethod
    def _empty() -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(":memory:")
        try:
            for statement in _MIGRATIONS:
                connection.execute(statement)
            yield connection
        finally:
            connection.close()

    def _row_to_entry(self, row: tuple[Any, ...]) -> RegistryEntry:
        (name, task, protocol, protocol_json, model_sha256, model_source, architecture,
         scale, channels, file, file_sha256, created_at) = row
        return RegistryEntry(
            name=name, task=task, protocol=protocol, protocol_json=protocol_json,
            model_sha256=model_sha256, model_source=model_source, architecture=architecture,
            scale=int(scale), channels=int(channels), path=self.files / file,
            file_sha256=file_sha256, created_at=created_at,
        )

    def add(self, name: str, fingerprint: Fingerprint) -> RegistryEntry:
        """Register a fingerprint under a new, unique name.

        Raises:
            InvalidInputError: If the name is invalid.
            DuplicateNameError: If the name is already registered.
            RegistryError: If the registry cannot be written.
        """
        check_name(name)
        data = fingerprint_bytes(dataclasses.replace(fingerprint, name=name))
        file_name = f"{name}-{uuid.uuid4().hex[:12]}.safetensors"
        path = self.files / file_name
        with self._connect(write=True) as connection:
            try:
                atomic_write_bytes(path, data)
            except OSError as error:
                raise RegistryError(
                    f"cannot write fingerprint file {path}: {error.strerror}; check free space and permissions"
                ) from None
            row = (
                name, fingerprint.protocol.task, fingerprint.protocol.name, fingerprint.protocol.to_json(),
                fingerprint.model.sha256, fingerprint.model.source, fingerprint.model.architecture,
                fingerprint.model.scale, fingerprint.model.input_channels, file_name,
                hashlib.sha256(data).hexdigest(), fingerprint.created_at,
            )
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(f"INSERT INTO fingerprints VALUES ({', '.join('?' * len(row))})", row)
                connection.execute("COMMIT")
            except sqlite3.IntegrityError as error:
                connection.execute("ROLLBACK")
                path.unlink(missing_ok=True)
                if "UNIQUE" in str(error):
                    raise _duplicate(name) from None
                raise RegistryError(f"cannot register {name!r} in {self.database}: {error}") from None
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                path.unlink(missing_ok=True)
                raise
        logger.info("registered %s as %s", name, path)
        return self.get(name)

    def ensure_available(self, name: str) -> None:
        """Raise unless ``name`` is a valid name that is not registered yet.

        Raises:
            InvalidInputError: If the name is invalid.
            DuplicateNameError: If the name is already registered.
        """
        check_name(name)
        if self.contains(name):
            raise _duplicate(name)

    def contains(self, name: str) -> bool:
        """Return whether a fingerprint called ``name`` is registered."""
        with self._connect(write=False) as connection:
            return connection.execute("SELECT 1 FROM fingerprints WHERE name = ?", (name,)).fetchone() is not None

    def get(self, name: str) -> RegistryEntry:
        """Return the entry called ``name``.

        Raises:
            NameNotFoundError: If no such fingerprint is registered.
        """
        with self._connect(write=False) as connection:
            row = connection.execute("SELECT * FROM fingerprints WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NameNotFoundError(
                f"no fingerprint named {name!r} in registry {self.root}; "
                f"run `critprint list --registry {self.root}` to see the names"
            )
        return self._row_to_entry(row)

    def entries(self, task: str | None = None) -> list[RegistryEntry]:
        """Return all entries, or those of one task, sorted by name."""
        with self._connect(write=False) as connection:
            if task is None:
                rows = connection.execute("SELECT * FROM fingerprints ORDER BY name").fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM fingerprints WHERE task = ? ORDER BY name", (task,)
                ).fetchall()
        return [self._row_to_entry(row) for row in rows]

    @staticmethod
    def _read_file(entry: RegistryEntry) -> tuple[Literal["ok", "missing", "altered"], bytes]:
        """Read an entry's file and compare it with the SHA-256 recorded at registration."""
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            return "missing", b""
        if hashlib.sha256(data).hexdigest() != entry.file_sha256:
            return "altered", data
        return "ok", data

    def load(self, name: str) -> Fingerprint:
        """Read the fingerprint called ``name``, checking its file's SHA-256.

        Raises:
            NameNotFoundError: If no such fingerprint is registered.
            RegistryError: If its file is missing or was altered.
        """
        entry = self.get(name)
        status, data = self._read_file(entry)
        if status == "missing":
            raise RegistryError(
                f"fingerprint file of {name!r} is missing: {entry.path}; remove and register it again"
            )
        if status == "altered":
            raise RegistryError(
                f"fingerprint file of {name!r} was altered since registration (SHA-256 mismatch): {entry.path}"
            )
        return fingerprint_from_bytes(data, str(entry.path))

    def check(self) -> list[CheckResult]:
        """Check every registered fingerprint's file against its recorded SHA-256.

        Returns:
            One result per entry, sorted by name; nothing is repaired.
        """
        results = []
        for entry in self.entries():
            status, data = self._read_file(entry)
            if status == "missing":
                results.append(CheckResult(entry.name, "missing", f"file not found: {entry.path}"))
                continue
            if status == "altered":
                results.append(CheckResult(entry.name, "altered", f"SHA-256 mismatch: {entry.path}"))
                continue
            try:
                fingerprint_from_bytes(data, str(entry.path))
            except FingerprintFormatError as error:
                results.append(CheckResult(entry.name, "corrupt", str(error)))
                continue
            results.append(CheckResult(entry.name, "ok"))
        return results

    def remove(self, name: str) -> RegistryEntry:
        """Unregister ``name`` and delete its file; return the removed entry."""
        entry = self.get(name)
        with self._connect(write=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM fingerprints WHERE name = ?", (name,))
            connection.execute("COMMIT")
        entry.path.unlink(missing_ok=True)
        logger.info("removed %s", name)
        return entry
