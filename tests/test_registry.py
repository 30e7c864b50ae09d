"""The SQLite fingerprint registry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from critprint.api import fingerprint_model
from critprint.errors import DuplicateNameError, InvalidInputError, NameNotFoundError, RegistryError
from critprint.fingerprint import Fingerprint
from critprint.protocol import Protocol
from critprint.registry import SCHEMA_VERSION, Registry


@pytest.fixture(scope="module")
def record(model_dir: Path) -> Fingerprint:
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    return fingerprint_model(model_dir / "denoiser_a.safetensors", protocol)


def test_add_get_list_remove(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    entry = registry.add("alpha", record)
    assert entry.path.exists()
    assert registry.get("alpha") == entry
    assert [item.name for item in registry.entries()] == ["alpha"]
    assert registry.entries(task="sr") == []
    assert registry.load("alpha").protocol == record.protocol
    registry.remove("alpha")
    assert registry.entries() == []
    assert not entry.path.exists()


def test_duplicate_name_rejected(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    registry.add("alpha", record)
    with pytest.raises(DuplicateNameError, match="'alpha' is already registered"):
        registry.add("alpha", record)
    assert len(list(registry.files.iterdir())) == 1


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(NameNotFoundError, match="no fingerprint named 'ghost'"):
        Registry(tmp_path).get("ghost")


def test_empty_registry_lists_nothing_and_creates_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "new")
    assert registry.entries() == []
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["", "-leading", "has space", "slash/name", "x" * 129])
def test_invalid_name_rejected(tmp_path: Path, record: Fingerprint, name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid fingerprint name"):
        Registry(tmp_path).add(name, record)


def test_tampered_file_detected(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    entry = registry.add("alpha", record)
    data = bytearray(entry.path.read_bytes())
    data[-1] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="altered since registration"):
        registry.load("alpha")


def test_failed_insert_leaves_no_file(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    registry.add("alpha", record)
    with sqlite3.connect(registry.database) as connection:
        connection.execute(
            "CREATE TRIGGER reject BEFORE INSERT ON fingerprints BEGIN SELECT RAISE(ABORT, 'simulated'); END"
        )
    with pytest.raises(RegistryError, match="cannot register 'beta'.*simulated"):
        registry.add("beta", record)
    assert [entry.name for entry in registry.entries()] == ["alpha"]
    assert len(list(registry.files.iterdir())) == 1


def test_read_only_folder_reported(tmp_path: Path, record: Fingerprint) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RegistryError, match="cannot create registry folder"):
        Registry(blocker / "registry").add("alpha", record)


def test_file_as_registry_rejected(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a folder")
    with pytest.raises(RegistryError, match="is a file; pass a folder"):
        Registry(path).entries()


def test_corrupt_database_reported(tmp_path: Path) -> None:
    (tmp_path / "registry.sqlite3").write_bytes(b"this is not a SQLite database" * 100)
    with pytest.raises(RegistryError, match="is corrupt"):
        Registry(tmp_path).entries()


def test_default_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITPRINT_HOME", str(tmp_path / "home"))
    assert Registry().root == tmp_path / "home"


def test_check_reports_each_problem(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    for name in ("fine", "gone", "edited"):
        registry.add(name, record)
    registry.get("gone").path.unlink()
    edited = registry.get("edited").path
    edited.write_bytes(edited.read_bytes()[:-1] + b"\x00")
    statuses = {result.name: result.status for result in registry.check()}
    assert statuses == {"edited": "altered", "fine": "ok", "gone": "missing"}


def test_unversioned_database_migrated(tmp_path: Path, record: Fingerprint) -> None:
    sqlite3.connect(tmp_path / "registry.sqlite3").close()
    registry = Registry(tmp_path)
    assert registry.entries() == []
    registry.add("alpha", record)
    with sqlite3.connect(registry.database) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_rejected(tmp_path: Path, record: Fingerprint) -> None:
    registry = Registry(tmp_path)
    registry.add("alpha", record)
    with sqlite3.connect(registry.database) as connection:
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1}, newer.*upgrade critprint"):
        registry.entries()
