"""Start a throwaway PostgreSQL server on loopback for the registry tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ServerUnavailable", "throwaway_server", "create_database"]

SERVER_USER = "critprint"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message gives the reason."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(path.split("/")[4]))
    if candidates:
        return candidates[-1]
    raise ServerUnavailable(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL")


def _run_as() -> dict[str, Any]:
    """Keyword arguments of subprocess.run that drop root, which initdb refuses to run as."""
    if os.geteuid() != 0:
        return {}
    for user in ("postgres", "nobody"):
        try:
            record = pwd.getpwnam(user)
        except KeyError:
            continue
        return {"user": record.pw_uid, "group": record.pw_gid, "extra_groups": []}
    raise ServerUnavailable("running as root and neither user 'postgres' nor 'nobody' exists to run the server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _check(command: list[str], **kwargs: Any) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, **kwargs)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ServerUnavailable(f"{Path(command[0]).name} failed: {lines[-1] if lines else result.returncode}")


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a server in a temporary folder; yield its URL; stop it and delete the folder.

    Trust authentication is safe here because the server listens on
    127.0.0.1 and a socket in its own folder only, and lives for one test run.
    """
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    identity = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="critprint-pg-"))
    try:
        if identity:
            os.chown(folder, identity["user"], identity["group"])
        data = folder / "data"
        _check([initdb, "-D", str(data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
               cwd=folder, **identity)
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        _check([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "-t", "60", "start"],
               cwd=folder, **identity)
        try:
            yield f"postgresql://{SERVER_USER}@127.0.0.1:{port}"
        finally:
            subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60, check=False, cwd=folder, **identity)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def create_database(server: str) -> str:
    """Create an empty database with a new name on ``server``; return its URL."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
