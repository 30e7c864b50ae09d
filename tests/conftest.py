"""Shared fixtures: tiny randomly initialised models and a fast protocol."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN

import throwaway_postgres as pgserver
from critprint.models import save_state_dict
from critprint.protocol import Protocol
from critprint.registry import Registry


def tiny_denoiser(seed: int) -> DnCNN:
    """Return an 8-layer, 8-channel DnCNN (the fewest layers spandrel detects)."""
    torch.manual_seed(seed)
    return DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R")


def tiny_upscaler(seed: int) -> Compact:
    """Return an x4 Compact model with 8 features and 2 convolutions."""
    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default registry at a scratch folder, never the user's own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CRITPRINT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny models: two independent denoisers and one x4 upscaler."""
    folder = tmp_path_factory.mktemp("models")
    save_state_dict(tiny_denoiser(1).state_dict(), folder / "denoiser_a.safetensors")
    save_state_dict(tiny_denoiser(2).state_dict(), folder / "denoiser_b.safetensors")
    torch.save(tiny_denoiser(1).state_dict(), folder / "denoiser_a.pth")
    save_state_dict(tiny_upscaler(3).state_dict(), folder / "upscaler.safetensors")
    return folder


@pytest.fixture()
def fast_denoise() -> Protocol:
    """A denoising protocol small enough for unit tests (24 px, 20 steps)."""
    return Protocol(name="test", task="denoise", size=24, iterations=20)


@pytest.fixture()
def fast_sr() -> Protocol:
    """An x4 super-resolution protocol for unit tests (32 px, 20 steps)."""
    return Protocol(name="test", task="sr", size=32, iterations=20, scale=4, noise_sigma=0.0)


@pytest.fixture(autouse=True)
def no_registry_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore a developer's own $CRITPRINT_REGISTRY and $CRITPRINT_FILES, which name real registries."""
    monkeypatch.delenv("CRITPRINT_REGISTRY", raising=False)
    monkeypatch.delenv("CRITPRINT_FILES", raising=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server on loopback, with no database chosen.

    ``$CRITPRINT_TEST_POSTGRES_URL`` names a server to use. Otherwise a
    throwaway server is started from the PostgreSQL binaries on PATH or in
    Debian's /usr/lib/postgresql/VERSION/bin, as an unprivileged user when the
    tests run as root, listening on 127.0.0.1 only. Without binaries the tests
    that need it are skipped, unless ``$CRITPRINT_REQUIRE_POSTGRES=1`` (set by
    .ci/run) makes that a failure.
    """
    existing = os.environ.get("CRITPRINT_TEST_POSTGRES_URL")
    if existing:
        yield existing.rstrip("/")
        return
    try:
        with pgserver.throwaway_server() as url:
            yield url
    except pgserver.ServerUnavailable as error:
        if os.environ.get("CRITPRINT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CRITPRINT_REQUIRE_POSTGRES=1 but no PostgreSQL server could be started: {error}")
        pytest.skip(f"no PostgreSQL server: {error}")


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the test server."""
    return pgserver.create_database(postgres_server)


@pytest.fixture()
def count_reads() -> Callable[[Registry], list[str]]:
    """Return a function that makes a registry record the file names it reads from then on."""

    def start(registry: Registry) -> list[str]:
        reads: list[str] = []
        original = registry._store.read

        def counting_read(file_name: str) -> bytes:
            reads.append(file_name)
            return original(file_name)

        registry._store.read = counting_read  # type: ignore[method-assign]
        return reads

    return start
