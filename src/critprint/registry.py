"""The fingerprint registry: a database plus one file per fingerprint.

Layout of a registry folder, the default::

    registry.sqlite3        one row per fingerprint (WAL journal)
    fingerprints/           the fingerprint files, named NAME-RANDOM.safetensors

A registry a team shares keeps the rows in PostgreSQL instead
(``Registry("postgresql://host/db", files=...)``, see
:mod:`critprint.registry_postgres`) and the files in a folder or an
object-store path (:mod:`critprint.objectstore`). Both databases have the
same schema and migrations.

A registration writes the file under a temporary name, renames it, then
inserts the row in one transaction. If the insert fails, the file is removed,
so the registry never lists a fingerprint without its file. Each row stores
the SHA-256 of its file, and reading a fingerprint checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy
import torch

from critprint.errors import (
    DuplicateNameError,
    FingerprintFormatError,
    InvalidInputError,
    NameNotFoundError,
    RegistryError,
)
from critprint.fingerprint import Fingerprint, atomic_write_bytes, fingerprint_bytes, fingerprint_from_bytes

__all__ = [
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "COLUMNS",
    "IndexRow",
    "encode_features",
    "decode_features",
    "Row",
    "CheckResult",
    "RegistryEntry",
    "Registry",
    "Database",
    "FileStore",
    "SqliteDatabase",
    "LocalFileStore",
    "default_registry_dir",
    "check_name",
    "is_database_url",
    "duplicate_name_error",
    "newer_schema_error",
]

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

# Version 2 keeps each fingerprint's feature vector in its row, so that
# identification ranks a large registry without reading its files. Rows made
# before it hold '' until their fingerprint is registered again.
_SCHEMA_V2 = "ALTER TABLE fingerprints ADD COLUMN features TEXT NOT NULL DEFAULT ''"

# Statement k takes a database from schema version k (SQLite's user_version)
# to k + 1. A new schema appends a statement; existing ones never change.
# Both databases, SQLite and PostgreSQL, run the same statements.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS: tuple[str, ...] = (
    "name", "task", "protocol", "protocol_json", "model_sha256", "model_source", "architecture",
    "scale", "channels", "file", "file_sha256", "created_at", "features",
)
"""The columns of the ``fingerprints`` table, in the order of a :data:`Row`."""


def check_columns(columns: Sequence[str]) -> Sequence[str]:
    """Return ``columns`` if each is a column of the table, else raise; they are pasted into SQL."""
    unknown = [column for column in columns if column not in COLUMNS]
    if unknown:
        raise InvalidInputError(f"invalid registry columns {unknown}: expected names from {list(COLUMNS)}")
    return columns


class IndexRow(NamedTuple):
    """The columns of a registered fingerprint that identification ranks by, read without its file."""

    name: str
    protocol_json: str
    model_sha256: str
    scale: int
    channels: int
    features: str


_INDEX_COLUMNS = IndexRow._fields

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM fingerprints"


def encode_features(features: torch.Tensor) -> str:
    """Return a feature vector as the hex text of its little-endian float64 values, as rows store it.

    >>> encode_features(torch.tensor([1.0]))
    '000000000000f03f'
    """
    return features.detach().to("cpu", torch.float64).numpy().astype("<f8").tobytes().hex()


def decode_features(texts: Sequence[str], length: int) -> torch.Tensor:
    """Return the (N, L) float64 matrix of N hex-encoded feature vectors of length L.

    Raises:
        RegistryError: If a text is not L hex-encoded float64 values.
    """
    try:
        data = bytes.fromhex("".join(texts))
    except ValueError:
        raise RegistryError("invalid feature vector in the registry: not hex text; register the fingerprint again") from None
    if len(data) != 8 * length * len(texts):
        raise RegistryError(
            f"invalid feature vectors in the registry: expected {len(texts)} of {length} values; "
            "register the fingerprints again"
        )
    matrix = numpy.frombuffer(data, dtype="<f8").reshape(len(texts), length)
    return torch.from_numpy(matrix.astype(numpy.float64))

# A registry location that starts with a URL scheme names a database.
_URL_PATTERN = re.compile(r"^postgres(ql)?(\+\w+)?://")


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


def duplicate_name_error(name: str) -> DuplicateNameError:
    """Return the error for a name that is already registered."""
    return DuplicateNameError(
        f"fingerprint name {name!r} is already registered; choose another name or run `critprint remove {name}` first"
    )


def newer_schema_error(location: str, version: int) -> RegistryError:
    """Return the error for a database made by a newer critprint."""
    return RegistryError(
        f"registry {location} has schema version {version}, newer than the supported "
        f"{SCHEMA_VERSION}; upgrade critprint"
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
    """One registered fingerprint as the database lists it.

    ``path`` is the fingerprint file's path, or its URL in an object store;
    ``file`` is its name inside the registry's file store. ``features`` is the
    feature vector as :func:`encode_features` writes it, or '' for a row
    registered before the database kept it.
    """

    name: str
    task: str
    protocol: str
    protocol_json: str
    model_sha256: str
    model_source: str
    architecture: str
    scale: int
    channels: int
    path: Path | str
    file_sha256: str
    created_at: str
    file: str = ""
    features: str = ""

    @property
    def noise_input(self) -> tuple[float | None, float | None]:
        """The model's input the fingerprint was made at: ``(noise_sigma, noise_map_level)``.

        ``noise_sigma`` is the degradation's noise and ``noise_map_level``
        the noise-level map's value, both on the [0, 1] scale. The level is
        None for a model without a noise-level input, and in records made
        before registration stated it (such a model then got 15/255). Either
        is None if the stored protocol cannot be read.
        """
        try:
            settings = json.loads(self.protocol_json)
        except ValueError:
            return None, None
        if not isinstance(settings, dict):
            return None, None
        sigma, level = settings.get("noise_sigma"), settings.get("noise_map_level")
        return (
            float(sigma) if isinstance(sigma, (int, float)) else None,
            float(level) if isinstance(level, (int, float)) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-compatible dictionary (``protocol_json`` omitted)."""
        noise_sigma, noise_map_level = self.noise_input
        return {
            "name": self.name,
            "task": self.task,
            "protocol": self.protocol,
            "noise_sigma": noise_sigma,
            "noise_map_level": noise_map_level,
            "model_sha256": self.model_sha256,
            "model_source": self.model_source,
            "architecture": self.architecture,
            "scale": self.scale,
            "channels": self.channels,
            "path": str(self.path),
            "file_sha256": self.file_sha256,
            "created_at": self.created_at,
        }


Row = tuple[Any, ...]


class Database(Protocol):
    """The storage of a registry's rows: the ``fingerprints`` table of the schema.

    Every method opens what it needs, migrates an older schema, and raises
    :class:`RegistryError` with a one-line message on a failure.
    """

    location: str

    def prepare_write(self) -> None:
        """Make sure a write can start (create the folder or the schema)."""

    def insert(self, name: str, row: Row) -> None:
        """Insert one row in one transaction; raise DuplicateNameError if ``name`` exists."""

    def fetch(self, name: str) -> Row | None:
        """Return the row called ``name``, or None."""

    def fetch_all(self, task: str | None, columns: Sequence[str] = COLUMNS) -> list[Row]:
        """Return every row, or those of one task, sorted by name; only ``columns``, in their order."""

    def delete(self, name: str) -> None:
        """Delete the row called ``name`` in one transaction."""


class FileStore(Protocol):
    """The storage of a registry's fingerprint files, addressed by file name."""

    location: str

    def prepare_write(self) -> None:
        """Make sure a file can be written (create the folder)."""

    def write(self, file_name: str, data: bytes) -> None:
        """Write a whole file at once: a reader sees all of it or nothing."""

    def read(self, file_name: str) -> bytes:
        """Return a file's bytes; raise FileNotFoundError if it does not exist."""

    def delete(self, file_name: str) -> None:
        """Delete a file; nothing happens if it does not exist."""

    def path(self, file_name: str) -> Path | str:
        """Return a file's path, or its URL in an object store."""


class SqliteDatabase:
    """The rows of a folder registry, in ``registry.sqlite3`` (WAL journal).

    Args:
        root: The registry folder; created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "registry.sqlite3"
        self.location = str(root)

    def prepare_write(self) -> None:
        self._check_folder()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RegistryError(
                f"cannot create registry folder {self.root}: {error.strerror}; "
                "pass a writable --registry DIR or set CRITPRINT_HOME"
            ) from None

    def _check_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry path {self.root} is a file; pass a folder with --registry DIR")

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        self._check_folder()
        if write:
            self.prepare_write()
        elif not self.path.exists():
            yield from self._empty()
            return
        try:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as error:
            raise RegistryError(f"cannot open registry {self.path}: {error}") from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._migrate(connection)
            yield connection
        except sqlite3.OperationalError as error:
            raise RegistryError(
                f"cannot use registry {self.path}: {error}; check that the folder is writable"
            ) from None
        except sqlite3.DatabaseError as error:
            raise RegistryError(
                f"registry database {self.path} is corrupt ({error}); restore it from a backup"
            ) from None
        finally:
            connection.close()

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Bring the database to SCHEMA_VERSION in one transaction, or raise if it is newer."""
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise newer_schema_error(str(self.path), version)
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between the read above and the lock.
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for statement in MIGRATIONS[version:]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        logger.info("migrated %s from schema version %d to %d", self.path, version, SCHEMA_VERSION)

    @staticmethod
    def _empty() -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(":memory:")
        try:
            for statement in MIGRATIONS:
                connection.execute(statement)
            yield connection
        finally:
            connection.close()

    def insert(self, name: str, row: Row) -> None:
        with self._connect(write=True) as connection:
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(f"INSERT INTO fingerprints ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
                connection.execute("COMMIT")
            except sqlite3.IntegrityError as error:
                connection.execute("ROLLBACK")
                if "UNIQUE" in str(error):
                    raise duplicate_name_error(name) from None
                raise RegistryError(f"cannot register {name!r} in {self.path}: {error}") from None
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def fetch(self, name: str) -> Row | None:
        with self._connect(write=False) as connection:
            row: Row | None = connection.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
        return row

    def fetch_all(self, task: str | None, columns: Sequence[str] = COLUMNS) -> list[Row]:
        select = f"SELECT {', '.join(check_columns(columns))} FROM fingerprints"
        with self._connect(write=False) as connection:
            if task is None:
                return connection.execute(f"{select} ORDER BY name").fetchall()
            return connection.execute(f"{select} WHERE task = ? ORDER BY name", (task,)).fetchall()

    def delete(self, name: str) -> None:
        with self._connect(write=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM fingerprints WHERE name = ?", (name,))
            connection.execute("COMMIT")


class LocalFileStore:
    """Fingerprint files in a local folder, written through a rename."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)

    def prepare_write(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RegistryError(
                f"cannot create fingerprint folder {self.folder}: {error.strerror}; "
                "pass a writable folder for the fingerprint files"
            ) from None

    def write(self, file_name: str, data: bytes) -> None:
        path = self.folder / file_name
        try:
            atomic_write_bytes(path, data)
        except OSError as error:
            raise RegistryError(
                f"cannot write fingerprint file {path}: {error.strerror}; check free space and permissions"
            ) from None

    def read(self, file_name: str) -> bytes:
        return (self.folder / file_name).read_bytes()

    def delete(self, file_name: str) -> None:
        (self.folder / file_name).unlink(missing_ok=True)

    def path(self, file_name: str) -> Path:
        return self.folder / file_name


def is_database_url(location: str | Path) -> bool:
    """Return whether a registry location is a database URL rather than a folder.

    >>> is_database_url("postgresql://127.0.0.1/critprint"), is_database_url("fingerprints")
    (True, False)
    """
    return isinstance(location, str) and bool(_URL_PATTERN.match(location))


def _file_store(files: str | Path) -> FileStore:
    """Return the store for a folder, a ``file://`` URL or an fsspec object-store URL."""
    if isinstance(files, Path) or "://" not in files:
        return LocalFileStore(Path(files).expanduser())
    if files.startswith("file://"):
        return LocalFileStore(Path(files[len("file://"):]).expanduser())
    from critprint.objectstore import FsspecFileStore

    return FsspecFileStore(files)


class Registry:
    """Registered fingerprints with unique names.

    Args:
        root: A registry folder (created on first write), or a database URL
            ``postgresql://USER@HOST:PORT/DB`` of a shared registry (needs
            ``critprint[postgres]``). Default: ``$CRITPRINT_REGISTRY`` if
            set, else :func:`default_registry_dir`.
        files: Where the fingerprint files go: a folder, ``file://PATH`` or an
            fsspec URL such as ``memory://prefix`` (needs fsspec, and the
            package of its protocol). Default: ``fingerprints/`` inside a
            registry folder; ``$CRITPRINT_FILES`` for a database URL, which
            needs one of the two.

    Raises:
        RegistryError: If a database URL has no file location.
    """

    def __init__(self, root: str | Path | None = None, files: str | Path | None = None) -> None:
        if root is None:
            root = os.environ.get("CRITPRINT_REGISTRY") or default_registry_dir()
        self.database_url: str | None = None
        if is_database_url(root):
            from critprint.registry_postgres import PostgresDatabase

            location = str(root)
            self.root: Path | None = None
            self._database: Database = PostgresDatabase(location)
            self.database_url = location
            files = files or os.environ.get("CRITPRINT_FILES")
            if not files:
                raise RegistryError(
                    f"registry {self._database.location} needs a place for its fingerprint files; "
                    "set CRITPRINT_FILES to a folder or an object-store URL (or pass files=...)"
                )
        else:
            self.root = Path(root).expanduser()
            self._database = SqliteDatabase(self.root)
            files = files if files is not None else self.root / "fingerprints"
        self._store: FileStore = _file_store(files)
        self.location = self._database.location

    @property
    def database(self) -> Path | str:
        """The SQLite file of a folder registry, or the (password-free) database URL."""
        if isinstance(self._database, SqliteDatabase):
            return self._database.path
        return self._database.location

    @property
    def files(self) -> Path:
        """The folder of the fingerprint files, for a registry that keeps them in one."""
        if not isinstance(self._store, LocalFileStore):
            raise RegistryError(f"registry {self.location} keeps its files at {self._store.location}, not a folder")
        return self._store.folder

    @property
    def files_location(self) -> str:
        """Where the fingerprint files are: a folder or an object-store URL."""
        return self._store.location

    def _row_to_entry(self, row: Row) -> RegistryEntry:
        (name, task, protocol, protocol_json, model_sha256, model_source, architecture,
         scale, channels, file, file_sha256, created_at, features) = row
        return RegistryEntry(
            name=name, task=task, protocol=protocol, protocol_json=protocol_json,
            model_sha256=model_sha256, model_source=model_source, architecture=architecture,
            scale=int(scale), channels=int(channels), path=self._store.path(file), file=file,
            file_sha256=file_sha256, created_at=created_at, features=features,
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
        self._database.prepare_write()
        self._store.prepare_write()
        self._store.write(file_name, data)
        row = (
            name, fingerprint.protocol.task, fingerprint.protocol.name, fingerprint.protocol.to_json(),
            fingerprint.model.sha256, fingerprint.model.source, fingerprint.model.architecture,
            fingerprint.model.scale, fingerprint.model.input_channels, file_name,
            hashlib.sha256(data).hexdigest(), fingerprint.created_at, encode_features(fingerprint.features),
        )
        try:
            self._database.insert(name, row)
        except BaseException:
            self._store.delete(file_name)
            raise
        logger.info("registered %s as %s", name, self._store.path(file_name))
        return self.get(name)

    def ensure_available(self, name: str) -> None:
        """Raise unless ``name`` is a valid name that is not registered yet.

        Raises:
            InvalidInputError: If the name is invalid.
            DuplicateNameError: If the name is already registered.
        """
        check_name(name)
        if self.contains(name):
            raise duplicate_name_error(name)

    def contains(self, name: str) -> bool:
        """Return whether a fingerprint called ``name`` is registered."""
        return self._database.fetch(name) is not None

    def get(self, name: str) -> RegistryEntry:
        """Return the entry called ``name``.

        Raises:
            NameNotFoundError: If no such fingerprint is registered.
        """
        row = self._database.fetch(name)
        if row is None:
            raise NameNotFoundError(
                f"no fingerprint named {name!r} in registry {self.location}; "
                f"run `critprint list --registry {self.location}` to see the names"
            )
        return self._row_to_entry(row)

    def entries(self, task: str | None = None) -> list[RegistryEntry]:
        """Return all entries, or those of one task, sorted by name."""
        return [self._row_to_entry(row) for row in self._database.fetch_all(task)]

    def index(self, task: str | None = None) -> list[IndexRow]:
        """Return the columns identification ranks by, for every entry or those of one task, sorted by name.

        One query and no file reads, so that ranking 100,000 fingerprints
        costs a fraction of a second.
        """
        return [IndexRow(*row) for row in self._database.fetch_all(task, _INDEX_COLUMNS)]

    def _read_file(self, entry: RegistryEntry) -> tuple[Literal["ok", "missing", "altered"], bytes]:
        """Read an entry's file and compare it with the SHA-256 recorded at registration."""
        try:
            data = self._store.read(entry.file)
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
        return self.load_entry(self.get(name))

    def load_entry(self, entry: RegistryEntry) -> Fingerprint:
        """Read the fingerprint of an entry already fetched, checking its file's SHA-256.

        Raises:
            RegistryError: If its file is missing or was altered.
        """
        status, data = self._read_file(entry)
        if status == "missing":
            raise RegistryError(
                f"fingerprint file of {entry.name!r} is missing: {entry.path}; remove and register it again"
            )
        if status == "altered":
            raise RegistryError(
                f"fingerprint file of {entry.name!r} was altered since registration (SHA-256 mismatch): {entry.path}"
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
        self._database.delete(name)
        self._store.delete(entry.file)
        logger.info("removed %s", name)
        return entry
