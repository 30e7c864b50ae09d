"""End to end on the bundled models with the quick protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from critprint.api import register, verify_registered
from critprint.attacks import prune_magnitude
from critprint.models import read_state_dict, save_state_dict
from critprint.registry import Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    store = Registry(tmp_path_factory.mktemp("registry"))
    register("zoo:dncnn", "dncnn", store, protocol="quick")
    return store


def test_pruned_copy_is_derived(registry: Registry, tmp_path: Path) -> None:
    pruned = save_state_dict(prune_magnitude(read_state_dict("zoo:dncnn"), 0.10), tmp_path / "pruned.safetensors")
    result = verify_registered(str(pruned), "dncnn", registry)
    assert result.verdict == "derived"
    assert result.ratio < 1


def test_independent_model_is_independent(registry: Registry) -> None:
    result = verify_registered("zoo:nafnet", "dncnn", registry)
    assert result.verdict == "independent"
    assert result.ratio > 1
