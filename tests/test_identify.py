"""Identification ranks by the feature vectors in the registry and checks the files of its matches."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from critprint import api
from critprint.decision import feature_distance
from critprint.protocol import Protocol
from critprint.registry import Registry, encode_features


CountReads = Callable[[Registry], list[str]]

# Two trained denoisers of the zoo, which this small protocol separates (d / eta about 8).
SMALL = Protocol(name="test", task="denoise", size=32, iterations=30)


@pytest.fixture()
def two_sources(tmp_path: Path) -> Registry:
    """A registry with the fingerprints of two independent bundled denoisers."""
    registry = Registry(tmp_path / "registry")
    api.register("zoo:dncnn", "alpha", registry, protocol=SMALL)
    api.register("zoo:nafnet", "beta", registry, protocol=SMALL)
    return registry


def set_row_features(registry: Registry, name: str, text: str) -> None:
    with sqlite3.connect(registry.database) as connection:
        connection.execute("UPDATE fingerprints SET features = ? WHERE name = ?", (text, name))


def test_identify_reads_only_the_match(two_sources: Registry, count_reads: CountReads) -> None:
    reads = count_reads(two_sources)
    results = api.identify("zoo:dncnn", two_sources, task="denoise")
    assert [result.source for result in results] == ["alpha", "beta"]
    assert [result.verdict for result in results] == ["derived", "independent"]
    assert reads == [two_sources.get("alpha").file]


def test_rows_without_features_read_files(two_sources: Registry, count_reads: CountReads) -> None:
    indexed = api.identify("zoo:dncnn", two_sources, task="denoise")
    for name in ("alpha", "beta"):
        set_row_features(two_sources, name, "")
    reads = count_reads(two_sources)
    legacy = api.identify("zoo:dncnn", two_sources, task="denoise")
    assert [result.source for result in legacy] == ["alpha", "beta"]
    assert [result.distance for result in legacy] == [result.distance for result in indexed]
    assert len(reads) == 2


def test_altered_file_drops_the_match(two_sources: Registry) -> None:
    path = Path(two_sources.get("alpha").path)
    path.write_bytes(path.read_bytes() + b"x")
    results = api.identify("zoo:dncnn", two_sources, task="denoise")
    assert [result.source for result in results] == ["beta"]


def test_forged_row_cannot_make_a_match(two_sources: Registry) -> None:
    # beta's row is set to alpha's features, but its file, whose hash the registry recorded, keeps beta's own.
    alpha = two_sources.load("alpha")
    set_row_features(two_sources, "beta", encode_features(alpha.features))
    results = {result.source: result for result in api.identify("zoo:dncnn", two_sources)}
    assert results["alpha"].verdict == "derived"
    assert results["beta"].verdict == "independent"
    assert results["beta"].distance > results["alpha"].distance


def test_top_is_a_prefix_of_the_ranking(two_sources: Registry) -> None:
    api.register("zoo:compact-dn", "gamma", two_sources, protocol=SMALL)
    everything = api.identify("zoo:nafnet", two_sources, task="denoise")
    (first,) = api.identify("zoo:nafnet", two_sources, task="denoise", top=1)
    assert first.source == everything[0].source == "beta"
    assert first.distance == everything[0].distance
    assert [result.distance for result in everything] == sorted(result.distance for result in everything)


def test_invalid_row_features_fall_back_to_files(two_sources: Registry) -> None:
    set_row_features(two_sources, "beta", "not hex")
    results = api.identify("zoo:dncnn", two_sources, task="denoise")
    assert [result.source for result in results] == ["alpha", "beta"]
    # The suspect has alpha's weights, so its features are alpha's.
    expected = feature_distance(two_sources.load("beta").features, two_sources.load("alpha").features)
    assert results[1].distance == pytest.approx(expected, rel=1e-12)


def test_registered_row_keeps_the_features(two_sources: Registry) -> None:
    entry = two_sources.get("alpha")
    assert entry.features == encode_features(two_sources.load("alpha").features)
    assert len(bytes.fromhex(entry.features)) == 8 * torch.numel(two_sources.load("alpha").features)
