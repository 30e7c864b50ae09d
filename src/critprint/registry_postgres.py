"""The rows of a shared registry in PostgreSQL, through SQLAlchemy.

The table is the SQLite registry's, created by the same statements
(:data:`critprint.registry.MIGRATIONS`). PostgreSQL has no ``user_version``,
so the schema version is the one row of the table ``critprint_schema``. A
migration runs in one transaction under an advisory lock, so two workers that
open a new database at once migrate it once.

Needs ``pip install 'critprint[postgres]'`` (SQLAlchemy and psycopg 3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from critprint.errors import RegistryError
from critprint.registry import COLUMNS, MIGRATIONS, check_columns, SCHEMA_VERSION, Row, duplicate_name_error, newer_schema_error

__all__ = ["PostgresDatabase"]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the migration: any constant shared by all critprint versions.
_MIGRATION_LOCK = 0x63726974

_COLUMNS = COLUMNS

# One engine (and its connection pool) per URL and process.
_ENGINES: dict[str, Any] = {}


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


class PostgresDatabase:
    """The ``fingerprints`` table in a PostgreSQL database.

    Args:
        url: ``postgresql://USER:PASSWORD@HOST:PORT/DB``; psycopg 3 is the
            driver (``postgresql+psycopg://`` is the same). Query parameters
            reach libpq, for example ``?host=/run/postgresql`` for a socket.

    Raises:
        RegistryError: If SQLAlchemy or psycopg is missing, or the URL is malformed.
    """

    def __init__(self, url: str) -> None:
        try:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError
        except ImportError:
            raise RegistryError(
                "a PostgreSQL registry needs SQLAlchemy and psycopg; run `pip install 'critprint[postgres]'`"
            ) from None
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise RegistryError(
                f"invalid registry URL {url!r}: expected postgresql://USER@HOST:PORT/DATABASE"
            ) from None
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername != "postgresql+psycopg":
            raise RegistryError(
                f"unsupported registry URL driver {parsed.drivername!r} in {parsed.render_as_string()}; "
                "use postgresql://USER@HOST:PORT/DATABASE"
            )
        self._url = parsed
        # Messages and listings never show the password.
        self.location = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
        self._migrated = False

    def _engine(self) -> Any:
        key = self._url.render_as_string(hide_password=False)
        engine = _ENGINES.get(key)
        if engine is None:
            from sqlalchemy import create_engine

            try:
                engine = create_engine(self._url, pool_pre_ping=True, pool_size=2, max_overflow=2)
            except ImportError:
                raise RegistryError(
                    "a PostgreSQL registry needs psycopg; run `pip install 'critprint[postgres]'`"
                ) from None
            _ENGINES[key] = engine
        return engine

    def _run(self, work: Any, *, name: str = "") -> Any:
        """Run ``work(connection)`` in one transaction, migrating first; map driver errors to RegistryError."""
        from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

        try:
            if not self._migrated:
                self._migrate()
            with self._engine().begin() as connection:
                return work(connection)
        except IntegrityError as error:
            if getattr(getattr(error, "orig", None), "sqlstate", None) == "23505":
                raise duplicate_name_error(name) from None
            raise RegistryError(f"cannot register {name!r} in {self.location}: {_first_line(error)}") from None
        except OperationalError as error:
            raise RegistryError(
                f"cannot reach registry {self.location}: {_first_line(error)}; check that the server runs and "
                "the URL's host, port, user and database"
            ) from None
        except DBAPIError as error:
            raise RegistryError(f"cannot use registry {self.location}: {_first_line(error)}") from None

    def _migrate(self) -> None:
        from sqlalchemy import text

        with self._engine().begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.execute(text("CREATE TABLE IF NOT EXISTS critprint_schema (version INTEGER NOT NULL)"))
            found = connection.execute(text("SELECT version FROM critprint_schema")).fetchall()
            version = int(found[0][0]) if found else 0
            if version > SCHEMA_VERSION:
                raise newer_schema_error(self.location, version)
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version:]:
                    connection.execute(text(statement))
                connection.execute(text("DELETE FROM critprint_schema"))
                connection.execute(text("INSERT INTO critprint_schema VALUES (:version)"), {"version": SCHEMA_VERSION})
                logger.info("migrated %s from schema version %d to %d", self.location, version, SCHEMA_VERSION)
        self._migrated = True

    def prepare_write(self) -> None:
        """Create or migrate the schema, and check that the server responds."""
        self._run(lambda connection: None)

    def insert(self, name: str, row: Row) -> None:
        from sqlalchemy import text

        statement = text(
            f"INSERT INTO fingerprints ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + column for column in _COLUMNS)})"
        )
        self._run(lambda connection: connection.execute(statement, dict(zip(_COLUMNS, row, strict=True))), name=name)

    def fetch(self, name: str) -> Row | None:
        from sqlalchemy import text

        statement = text(f"SELECT {', '.join(_COLUMNS)} FROM fingerprints WHERE name = :name")
        row = self._run(lambda connection: connection.execute(statement, {"name": name}).fetchone())
        return tuple(row) if row is not None else None

    def fetch_all(self, task: str | None, columns: Sequence[str] = COLUMNS) -> list[Row]:
        from sqlalchemy import text

        selected = ", ".join(check_columns(columns))
        if task is None:
            statement = text(f"SELECT {selected} FROM fingerprints ORDER BY name COLLATE \"C\"")
            rows = self._run(lambda connection: connection.execute(statement).fetchall())
        else:
            statement = text(f"SELECT {selected} FROM fingerprints WHERE task = :task ORDER BY name COLLATE \"C\"")
            rows = self._run(lambda connection: connection.execute(statement, {"task": task}).fetchall())
        return [tuple(row) for row in rows]

    def delete(self, name: str) -> None:
        from sqlalchemy import text

        self._run(lambda connection: connection.execute(text("DELETE FROM fingerprints WHERE name = :name"),
                                                        {"name": name}))
