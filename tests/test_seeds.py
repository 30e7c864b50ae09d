"""The initialisation-consistency study (``critprint bench --study seeds``), at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import critprint.evaluation.runner as runner_module
from critprint.cli.app import app
from critprint.decision import decide
from critprint.errors import InvalidInputError
from critprint.evaluation.seeds import SeedStudy, run_seed_studies, run_seed_study, summarise_seeds
from critprint.fingerprint import load_fingerprint
from critprint.protocol import Protocol


@pytest.fixture()
def tiny_protocol() -> Protocol:
    """24 px, 8 steps: enough for two seeds to differ, seconds for the whole study."""
    return Protocol(name="test", task="denoise", size=24, iterations=8)


@pytest.fixture()
def tiny_models(model_dir: Path) -> dict[str, Path]:
    """Denoiser A, the same weights in another file, and the independent denoiser B."""
    return {
        "a": model_dir / "denoiser_a.safetensors",
        "a-copy": model_dir / "denoiser_a.pth",
        "b": model_dir / "denoiser_b.safetensors",
    }


def test_study_writes_pictures_and_matrix_of_decide(
    tmp_path: Path, tiny_models: dict[str, Path], tiny_protocol: Protocol
) -> None:
    study = run_seed_study("denoise", tmp_path, seeds=3, protocol=tiny_protocol, models=tiny_models)

    assert study.models == ("a", "a-copy", "b")
    assert study.seeds == (0, 1, 2)
    with Image.open(tmp_path / "denoise" / "seeds-montage.png") as picture:
        # 3 rows and 3 columns of 24 px tiles with 4 px gaps, at scale 1.
        assert picture.size == (3 * 28 + 4, 3 * 28 + 4)
    with Image.open(tmp_path / "denoise" / "seeds-matrix.png") as picture:
        assert picture.size == (9 * 12, 9 * 12)

    # Every cell is decide() of the two cached fingerprint files, row as source.
    keys = [(model, seed) for model in study.models for seed in study.seeds]
    files = {key: load_fingerprint(tmp_path / "denoise" / "seeds" / f"seed-{key[1]}" / f"{key[0]}.safetensors")
             for key in keys}
    for (model, seed), record in files.items():
        assert record.protocol.seed == seed
        assert record.protocol.iterations == tiny_protocol.iterations
    for i, row in enumerate(keys):
        for j, column in enumerate(keys):
            expected = decide(files[row].features, files[column].features).ratio
            assert study.ratios[i][j] == pytest.approx(expected, rel=1e-12, abs=0.0)
        assert study.ratios[i][i] == 0.0


def test_copied_weights_give_zero_across(
    tmp_path: Path, tiny_models: dict[str, Path], tiny_protocol: Protocol
) -> None:
    study = run_seed_study("denoise", tmp_path, seeds=2, protocol=tiny_protocol, models=tiny_models)
    entries = {entry.model: entry for entry in study.entries}

    # The copy has the same weights, so the same seed gives the same critical image: d / eta = 0.
    assert entries["a"].across == 0.0
    assert entries["a"].across_model == "a-copy"
    assert entries["a"].across_seeds in ((0, 0), (1, 1))
    # Two seeds of one model give different critical images.
    assert entries["a"].within > 0.0
    assert entries["a"].within == pytest.approx(entries["a-copy"].within)
    # B's closest model is A or its copy, never B itself.
    assert entries["b"].across_model in ("a", "a-copy")
    assert entries["b"].across > 0.0


def test_summary_of_hand_made_matrix() -> None:
    # Two models x two seeds; rows and columns (x, 0), (x, 1), (y, 0), (y, 1).
    matrix = [
        [0.0, 0.2, 3.0, 5.0],
        [0.4, 0.0, 0.9, 4.0],
        [2.0, 6.0, 0.0, 1.5],
        [7.0, 8.0, 0.1, 0.0],
    ]
    entries = summarise_seeds(matrix, ["x", "y"], [0, 1])
    x, y = entries
    assert x.within == 0.4
    assert x.within_pair == (1, 0)
    assert x.across == 0.9
    assert x.across_model == "y"
    assert x.across_seeds == (1, 0)
    assert y.within == 1.5
    assert y.within_pair == (0, 1)
    assert y.across == 2.0
    assert y.across_model == "x"
    assert y.across_seeds == (0, 0)

    study = SeedStudy(task="denoise", models=("x", "y"), seeds=(0, 1), ratios=matrix, entries=entries, protocol={})
    data = study.to_dict()
    assert data["largest_within"] == 1.5
    assert data["smallest_across"] == 0.9
    assert data["within_judged_independent"] == 1
    assert data["within_pairs"] == 4
    assert data["across_judged_derived"] == 1
    assert data["across_pairs"] == 8


def test_matrix_of_wrong_size_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="expected 4 rows for 2 models and 2 seeds, got 3"):
        summarise_seeds([[0.0] * 4] * 3, ["x", "y"], [0, 1])


def test_second_run_reuses_cached_fingerprints(
    tmp_path: Path, tiny_models: dict[str, Path], tiny_protocol: Protocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_seed_study("denoise", tmp_path, seeds=2, protocol=tiny_protocol, models=tiny_models)

    def fail_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted again instead of reading the cache")

    monkeypatch.setattr(runner_module, "fingerprint_model", fail_extraction)
    second = run_seed_study("denoise", tmp_path, seeds=2, protocol=tiny_protocol, models=tiny_models)
    assert second.ratios == first.ratios
    # Another protocol does not match the cache, so it would extract.
    with pytest.raises(AssertionError, match="extracted again"):
        run_seed_study("denoise", tmp_path, seeds=2, protocol=tiny_protocol.replace(iterations=9), models=tiny_models)


@pytest.mark.parametrize("seeds", [1, 0, -3])
def test_too_few_seeds_rejected_before_any_work(tmp_path: Path, seeds: int) -> None:
    with pytest.raises(InvalidInputError, match=rf"invalid seeds {seeds}: .* pass --seeds 2 or more"):
        run_seed_studies(["denoise"], tmp_path, seeds=seeds)
    assert not any(tmp_path.iterdir())


def test_unknown_task_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="invalid task 'inpaint': expected one of 'denoise', 'sr'"):
        run_seed_studies(["denoise", "inpaint"], tmp_path, seeds=2)
    assert not any(tmp_path.iterdir())


cli = CliRunner()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--study", "seeds", "--seeds", "1"], "invalid seeds 1: expected an integer >= 2"),
        (["--study", "seeds", "--task", "inpaint"], "invalid task 'inpaint'"),
        (["--study", "seedz"], "invalid study 'seedz': expected one of 'seeds'"),
        (["--seeds", "3"], "--seeds 3 applies only to a study; add --study seeds"),
        (["--study", "seeds", "--quick"], "--quick does not apply to --study seeds; leave it out"),
        (["--study", "seeds", "--method", "maxobj"], "--method does not apply to --study seeds"),
    ],
)
def test_cli_bad_study_arguments(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = cli.invoke(app, ["bench", "--out", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_seed_study_on_zoo_sources(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli.invoke(app, ["bench", "--study", "seeds", "--task", "denoise", "--seeds", "2", "--iterations", "2",
                              "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "seeds-summary.json").read_text(encoding="utf-8"))
    study = summary["tasks"]["denoise"]
    assert study["seeds"] == [0, 1]
    assert len(study["models"]) == 6
    assert len(study["ratios"]) == 12
    assert study["protocol"]["iterations"] == 2
    assert (out / "denoise" / "seeds-montage.png").exists()
    assert (out / "denoise" / "seeds-matrix.png").exists()
    markdown = (out / "seeds-summary.md").read_text(encoding="utf-8")
    for model in study["models"]:
        assert f"| {model} |" in markdown
