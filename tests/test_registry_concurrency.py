"""The registry under concurrent writers and a writer killed mid-registration."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import torch

from critprint.fingerprint import Fingerprint, ModelIdentity
from critprint.protocol import get_protocol
from critprint.registry import Registry

WRITERS = 8
RECORDS_PER_WRITER = 20


def small_record(value: float) -> Fingerprint:
    """Return a valid fingerprint without running an extraction."""
    return Fingerprint(
        critical_image=torch.full((3, 8, 8), value),
        features=torch.full((30,), 1 / 30, dtype=torch.float64),
        protocol=get_protocol("quick", "denoise"),
        model=ModelIdentity("test", "0" * 64, "spandrel", "DnCNN", 3, 3, 1),
    )


def register_many(root: str, writer: int) -> None:
    registry = Registry(root)
    for index in range(RECORDS_PER_WRITER):
        registry.add(f"w{writer}-r{index}", small_record(index / RECORDS_PER_WRITER))


def register_then_hang(root: str, marker: str) -> None:
    """Write the fingerprint file, then stop before the database insert until killed."""
    import critprint.registry as registry_module

    original = registry_module.atomic_write_bytes

    def write_and_hang(path: Path, data: bytes) -> None:
        original(path, data)
        Path(marker).touch()
        time.sleep(60)

    registry_module.atomic_write_bytes = write_and_hang
    Registry(root).add("victim", small_record(0.5))


def test_eight_writers_keep_every_record(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=register_many, args=(str(tmp_path), writer)) for writer in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * WRITERS

    registry = Registry(tmp_path)
    names = {entry.name for entry in registry.entries()}
    expected = {f"w{writer}-r{index}" for writer in range(WRITERS) for index in range(RECORDS_PER_WRITER)}
    assert names == expected
    assert {result.status for result in registry.check()} == {"ok"}
    assert len(list(registry.files.glob("*.safetensors"))) == WRITERS * RECORDS_PER_WRITER


def test_killed_writer_leaves_no_record(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.add("before", small_record(0.1))
    marker = tmp_path / "written"
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=register_then_hang, args=(str(tmp_path), str(marker)))
    process.start()
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the writer never reached the database insert"
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=30)

    assert [entry.name for entry in registry.entries()] == ["before"]
    assert [result.status for result in registry.check()] == ["ok"]
    registry.add("victim", small_record(0.5))
    assert registry.load("victim").critical_image[0, 0, 0].item() == 0.5
