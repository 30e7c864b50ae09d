"""End to end on the bundled models with the quick protocol, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from critprint.attacks import prune_magnitude
from critprint.cli import app
from critprint.models import read_state_dict, save_state_dict

runner = CliRunner()

# (source, independent model of the same task)
PAIRS = [("dncnn", "nafnet"), ("compact-x4", "span-x4")]


def verify_json(suspect: str, name: str, registry: Path) -> dict[str, object]:
    result = runner.invoke(app, ["verify", suspect, "--against", name, "--registry", str(registry), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    for source, _ in PAIRS:
        result = runner.invoke(
            app, ["register", f"zoo:{source}", "--name", source, "--protocol", "quick", "--registry", str(folder)]
        )
        assert result.exit_code == 0, result.stderr
    return folder


@pytest.mark.parametrize(("source", "independent"), PAIRS)
def test_pruned_copy_is_derived(registry: Path, tmp_path: Path, source: str, independent: str) -> None:
    pruned = save_state_dict(
        prune_magnitude(read_state_dict(f"zoo:{source}"), 0.10), tmp_path / f"{source}-pruned.safetensors"
    )
    result = verify_json(str(pruned), source, registry)
    assert result["verdict"] == "derived"
    assert result["ratio"] < 1


@pytest.mark.parametrize(("source", "independent"), PAIRS)
def test_independent_model_is_independent(registry: Path, source: str, independent: str) -> None:
    result = verify_json(f"zoo:{independent}", source, registry)
    assert result["verdict"] == "independent"
    assert result["ratio"] > 1


@pytest.mark.parametrize("name", ["dncnn", "compact-x4"])
def test_fingerprint_from_another_machine_verifies(name: str) -> None:
    # Made once on the development machine (2-core x86_64, torch 2.14.1) and
    # shipped with the tests, so CI checks a record made on another machine.
    from critprint.api import verify
    from critprint.fingerprint import load_fingerprint

    record = load_fingerprint(Path(__file__).parent / "data" / f"{name}-32px.safetensors")
    result = verify(f"zoo:{name}", record)
    assert result.verdict == "derived"
    assert result.ratio < 0.5


@pytest.mark.parametrize("task", ["deblur", "lowlight", "derain", "jpeg"])
def test_bundled_model_of_each_task_verifies_pruned_copy(task: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    model = f"zoo:dncnn-{task}"
    small = ["--size", "32", "--iterations", "100"]
    result = runner.invoke(app, ["register", model, "--name", "source", "--registry", str(registry), *small])
    assert result.exit_code == 0, result.output
    pruned = tmp_path / "pruned.safetensors"
    save_state_dict(prune_magnitude(read_state_dict(model), 0.10), pruned)
    result = runner.invoke(app, ["verify", str(pruned), "--against", "source", "--registry", str(registry), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == task
    assert record["verdict"] == "derived", record["ratio"]
