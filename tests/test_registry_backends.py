"""The registry on each backend: SQLite in a folder, PostgreSQL, and files in an object store.

The PostgreSQL cases start a throwaway server on loopback (see
``throwaway_postgres.py``) and are skipped with the reason where PostgreSQL is
not installed; CI sets ``CRITPRINT_REQUIRE_POSTGRES=1`` so they run there.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from critprint.errors import DuplicateNameError, InvalidInputError, NameNotFoundError, RegistryError
from critprint.fingerprint import Fingerprint, ModelIdentity
from critprint.protocol import get_protocol
from critprint.registry import SCHEMA_VERSION, Registry

DATA = Path(__file__).parent / "data"

BACKENDS = ["sqlite", "sqlite+memory", "postgres", "postgres+memory"]

MakeRegistry = Callable[[], Registry]


def small_record(value: float, sha: str = "0" * 64) -> Fingerprint:
    """Return a valid fingerprint without running an extraction."""
    return Fingerprint(
        critical_image=torch.full((3, 8, 8), value),
        features=torch.full((30,), 1 / 30, dtype=torch.float64),
        protocol=get_protocol("quick", "denoise"),
        model=ModelIdentity("test", sha, "spandrel", "DnCNN", 3, 3, 1),
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """(name, registry location, file location) of a new, empty registry."""
    name: str = request.param
    files = f"memory://critprint-test-{uuid.uuid4().hex}" if name.endswith("+memory") else str(tmp_path / "files")
    if name.startswith("postgres"):
        location = request.getfixturevalue("postgres_url")
    else:
        location = str(tmp_path / "registry")
    return name, location, files


@pytest.fixture()
def make_registry(backend: tuple[str, str, str]) -> MakeRegistry:
    """A factory of registry handles on the same backend, as separate processes open it."""
    _, location, files = backend
    return lambda: Registry(location, files=files)


def _execute(backend: tuple[str, str, str], statements: list[str]) -> None:
    """Run SQL on the backend's database, outside critprint."""
    name, location, _ = backend
    if name.startswith("postgres"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)
        return
    with sqlite3.connect(Path(location) / "registry.sqlite3") as connection:
        for statement in statements:
            connection.execute(statement)


def test_add_get_list_remove(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    entry = registry.add("alpha", small_record(0.25))
    assert registry.get("alpha") == entry
    assert [item.name for item in registry.entries()] == ["alpha"]
    assert registry.entries(task="sr") == []
    assert registry.load("alpha").critical_image[0, 0, 0].item() == 0.25
    registry.remove("alpha")
    assert registry.entries() == []
    with pytest.raises(NameNotFoundError):
        registry.load("alpha")


def test_index_keeps_feature_vectors(make_registry: MakeRegistry) -> None:
    from critprint.registry import decode_features

    registry = make_registry()
    record = small_record(0.5)
    registry.add("beta", record)
    registry.add("alpha", small_record(0.25))
    index = registry.index(task="denoise")
    assert [row.name for row in index] == ["alpha", "beta"]
    assert registry.index(task="sr") == []
    assert json.loads(index[1].protocol_json) == record.protocol.to_dict()
    assert (index[1].scale, index[1].channels) == (1, 3)
    assert torch.equal(decode_features([index[1].features], 30)[0], record.features)


def test_unknown_columns_rejected(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    with pytest.raises(InvalidInputError, match="invalid registry columns \\['name; DROP'\\]"):
        registry._database.fetch_all(None, ("name; DROP",))


def test_names_sorted_bytewise(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    for name in ("b", "B", "a", "A-1"):
        registry.add(name, small_record(0.5))
    assert [entry.name for entry in registry.entries()] == ["A-1", "B", "a", "b"]


def test_duplicate_name_rejected_and_no_file_left(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    registry.add("alpha", small_record(0.1))
    with pytest.raises(DuplicateNameError, match="'alpha' is already registered"):
        registry.add("alpha", small_record(0.2))
    assert registry.load("alpha").critical_image[0, 0, 0].item() == pytest.approx(0.1)
    assert [result.status for result in registry.check()] == ["ok"]


def test_failed_insert_leaves_no_file(backend: tuple[str, str, str], make_registry: MakeRegistry) -> None:
    registry = make_registry()
    registry.add("alpha", small_record(0.1))
    if backend[0].startswith("postgres"):
        _execute(backend, [
            "CREATE FUNCTION reject() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'simulated'; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER reject BEFORE INSERT ON fingerprints FOR EACH ROW EXECUTE FUNCTION reject()",
        ])
    else:
        _execute(backend, [
            "CREATE TRIGGER reject BEFORE INSERT ON fingerprints BEGIN SELECT RAISE(ABORT, 'simulated'); END"
        ])
    written: list[str] = []
    store = registry._store
    original = store.write

    def remember(file_name: str, data: bytes) -> None:
        written.append(file_name)
        original(file_name, data)

    store.write = remember  # type: ignore[method-assign]
    with pytest.raises(RegistryError, match="simulated"):
        registry.add("beta", small_record(0.2))
    assert [entry.name for entry in registry.entries()] == ["alpha"]
    assert len(written) == 1
    with pytest.raises(FileNotFoundError):
        store.read(written[0])


def test_check_reports_each_problem(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    for name in ("fine", "gone", "edited"):
        registry.add(name, small_record(0.5))
    store = registry._store
    store.delete(registry.get("gone").file)
    edited = registry.get("edited").file
    store.write(edited, store.read(edited)[:-1] + b"\x00")
    statuses = {result.name: result.status for result in registry.check()}
    assert statuses == {"edited": "altered", "fine": "ok", "gone": "missing"}
    with pytest.raises(RegistryError, match="altered since registration"):
        registry.load("edited")


def test_new_database_migrated_to_current_schema(backend: tuple[str, str, str], make_registry: MakeRegistry) -> None:
    make_registry().add("alpha", small_record(0.5))
    name, location, _ = backend
    if name.startswith("postgres"):
        import psycopg

        with psycopg.connect(location) as connection:
            version = connection.execute("SELECT version FROM critprint_schema").fetchall()
    else:
        with sqlite3.connect(Path(location) / "registry.sqlite3") as connection:
            version = [connection.execute("PRAGMA user_version").fetchone()]
    assert version == [(SCHEMA_VERSION,)]


def test_newer_schema_rejected(backend: tuple[str, str, str], make_registry: MakeRegistry) -> None:
    make_registry().add("alpha", small_record(0.5))
    if backend[0].startswith("postgres"):
        _execute(backend, [f"UPDATE critprint_schema SET version = {SCHEMA_VERSION + 1}"])
    else:
        _execute(backend, [f"PRAGMA user_version={SCHEMA_VERSION + 1}"])
    with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1}, newer.*upgrade critprint"):
        make_registry().entries()


def _register_many(location: str, files: str, writer: int, count: int) -> None:
    registry = Registry(location, files=files)
    for index in range(count):
        registry.add(f"w{writer}-r{index}", small_record(index / count))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_concurrent_writers_keep_every_record(backend: tuple[str, str, str], make_registry: MakeRegistry) -> None:
    _, location, files = backend
    writers, count = 3, 4
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_register_many, args=(location, files, writer, count))
                 for writer in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * writers
    registry = make_registry()
    assert {entry.name for entry in registry.entries()} == {
        f"w{writer}-r{index}" for writer in range(writers) for index in range(count)
    }
    assert {result.status for result in registry.check()} == {"ok"}


def test_existing_sqlite_registry_keeps_opening(tmp_path: Path) -> None:
    """A registry folder written by critprint before the backends existed (tests/data/registry-v1)."""
    shutil.copytree(DATA / "registry-v1", tmp_path / "old")
    registry = Registry(tmp_path / "old")
    assert [entry.name for entry in registry.entries()] == ["legacy"]
    assert [result.status for result in registry.check()] == ["ok"]
    record = registry.load("legacy")
    assert record.model.sha256 == "1" * 64
    assert record.critical_image[2, 7, 7].item() == pytest.approx(1.0)
    registry.add("new", small_record(0.5))
    assert [entry.name for entry in registry.entries()] == ["legacy", "new"]


def test_registry_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITPRINT_REGISTRY", str(tmp_path / "shared"))
    assert Registry().root == tmp_path / "shared"


def test_database_url_without_files_rejected() -> None:
    with pytest.raises(RegistryError, match="set CRITPRINT_FILES to a folder or an object-store URL"):
        Registry("postgresql://critprint@127.0.0.1:1/none")


def test_files_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRITPRINT_FILES", str(tmp_path / "files"))
    assert Registry("postgresql://critprint@127.0.0.1:1/none").files == tmp_path / "files"


def test_unreachable_server_reported(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    registry = Registry("postgresql://critprint:secret@127.0.0.1:1/none?connect_timeout=5", files=tmp_path)
    with pytest.raises(RegistryError, match=r"cannot reach registry postgresql://critprint:\*\*\*@127\.0\.0\.1:1/none.*"
                                            "check that the server runs") as raised:
        registry.entries()
    assert "secret" not in str(raised.value)


def test_unsupported_url_driver_rejected(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unsupported registry URL driver 'postgresql\\+psycopg2'"):
        Registry("postgresql+psycopg2://127.0.0.1/db", files=tmp_path)
